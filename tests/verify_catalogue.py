"""A catalogue of hand derivations for ``symgrad verify``: right ones written in
several equivalent ways, and subtly wrong ones, each with the diagnosis it must get.

Rows are ``(network, wrt, formula, diagnosis)``; ``diagnosis`` is ``OK`` for a right
formula, a code from :data:`symgrad.verify.DIAGNOSES`, or ``None`` for a wrong formula
no simple diagnosis fits.
"""

from __future__ import annotations

from symgrad.spec import Layer, Spec

OK = "ok"

NETWORKS = {
    # tanh hidden layer, softmax output, cross-entropy (the fused δ₂ = (Ŷ − Y)/N)
    "tanh": Spec("tanh_softmax", 4, (Layer(5, "tanh"), Layer(3, "softmax")), loss="cross_entropy"),
    # sigmoid hidden layer, identity output, mse, with an L2 penalty
    "sigmoid": Spec("sigmoid_mse", 4, (Layer(5, "sigmoid"), Layer(3, "identity")), loss="mse",
                    l2=0.01),
    # relu hidden layer, sigmoid output, binary cross-entropy
    "relu": Spec("relu_bce", 4, (Layer(5, "relu"), Layer(2, "sigmoid")),
                 loss="binary_cross_entropy"),
    # three layers, for mix-ups between layers
    "deep": Spec("deep_mse", 3, (Layer(4, "tanh"), Layer(5, "relu"), Layer(2, "identity")),
                 loss="mse"),
    # beyond dense: batchnorm + dropout; a layernorm residual block; a value feeding two layers
    "bn": Spec("bn_dropout", 3, (Layer(4), Layer(type="batchnorm", activation="relu"),
                                 Layer(type="dropout", p=0.5), Layer(3, "softmax")),
               loss="cross_entropy"),
    "ln": Spec("ln_residual", 3, (Layer(4, "tanh"), Layer(type="layernorm"),
                                  Layer(type="add", inputs=("A1", "A2")), Layer(2, "identity")),
               loss="mse"),
    "fan": Spec("fan_out", 3, (Layer(4, "tanh"), Layer(3, "tanh"), Layer(3, "tanh", input="A1"),
                               Layer(type="add", inputs=("A2", "A3")), Layer(2, "identity")),
                loss="mse"),
    # a concat of two layers and X: each input's gradient is its columns of δ₃
    "cat": Spec("concat", 3, (Layer(2, "tanh"), Layer(4, input="X"),
                              Layer(type="concat", inputs=("A1", "A2", "X")), Layer(2)),
                loss="mse"),
    # on images: conv pad 1 → conv stride 2 pad 1 → maxpool 2 stride 1 → avgpool pad 1 → flatten
    "cnn": Spec("strided", [4, 4, 2], (
        Layer(type="conv2d", filters=3, kernel=3, padding=1, activation="tanh"),
        Layer(type="conv2d", filters=2, kernel=3, stride=2, padding=1, activation="relu"),
        Layer(type="maxpool2d", kernel=2, stride=1), Layer(type="avgpool2d", kernel=2, stride=1,
                                                          padding=1),
        Layer(type="flatten"), Layer(3, "softmax")), loss="cross_entropy"),
}

CATALOGUE: list[tuple[str, str, str, str | None]] = [
    # --- tanh → softmax / cross-entropy: right, in several spellings
    ("tanh", "W1", "X.T @ dZ1", OK),
    ("tanh", "W1", "(dZ1.T @ X).T", OK),
    ("tanh", "W1", "np.transpose(X) @ dZ1", OK),
    ("tanh", "W1", "np.dot(X.T, delta1)", OK),
    ("tanh", "W1", "X.T @ ((dZ2 @ W2.T) * (1 - A1**2))", OK),
    ("tanh", "b1", "sum(dZ1, axis=0)", OK),
    ("tanh", "b1", "np.ones(N) @ dZ1", OK),
    ("tanh", "b1", "np.sum(dZ1, axis=0, keepdims=True)", OK),
    ("tanh", "Z1", "(dZ2 @ W2.T) * (1 - A1**2)", OK),
    ("tanh", "Z1", "(dZ2 @ W2.T) * (1 - tanh(Z1)**2)", OK),
    ("tanh", "Z1", "dA1 * (1 - A1) * (1 + A1)", OK),
    ("tanh", "Z2", "(Yhat - Y) / N", OK),
    ("tanh", "Z2", "Yhat/N - Y/N", OK),
    ("tanh", "Z2", "Yhat * (dYhat - sum(dYhat * Yhat, axis=1, keepdims=True))", OK),
    ("tanh", "W2", "A1.T @ ((A_L - Y) / N)", OK),
    ("tanh", "A1", "dZ2 @ W2.T", OK),
    ("tanh", "Yhat", "-Y / Yhat / N", OK),
    # --- tanh → softmax / cross-entropy: subtly wrong
    ("tanh", "W1", "dZ1.T @ X", "transposed"),
    ("tanh", "W1", "X @ dZ1", "transposed"),
    ("tanh", "A1", "dZ2 @ W2", "transposed"),
    ("tanh", "Z2", "Yhat - Y", "factor"),  # the 1/N of the mean forgotten: factor N
    ("tanh", "b1", "mean(dZ1, axis=0)", "factor"),  # 1/N twice: factor 1/N
    ("tanh", "W2", "2 * A1.T @ dZ2", "factor"),
    ("tanh", "W1", "0.5 * X.T @ dZ1", "factor"),
    ("tanh", "W1", "-X.T @ dZ1", "sign"),
    ("tanh", "Z2", "(Y - Yhat) / N", "sign"),
    ("tanh", "Z1", "dZ2 @ W2.T", "activation-derivative"),
    ("tanh", "W1", "X.T @ (dZ2 @ W2.T)", "activation-derivative"),
    ("tanh", "W2", "X.T @ dZ1", "layer"),  # the gradient of the other layer
    ("tanh", "Z1", "(dZ2 @ W2.T) * (1 - A2**2)", "layer"),  # A2 where A1 belongs
    ("tanh", "W2", "X.T @ dZ2", "layer"),  # X (= A0) where A1 belongs
    ("tanh", "b1", "sum(dZ1, axis=1)", "axis"),
    ("tanh", "W1", "X.T @ dZ1 + A1", "shape"),
    ("tanh", "W1", "W1.T @ dZ1", "shape"),
    ("tanh", "b1", "dZ1", "other-gradient"),  # δ₁ itself: the sum over samples is missing
    ("tanh", "Z1", "(dZ2 @ W2.T) * (1 - A1)**2", None),
    # --- sigmoid → identity / mse, L2 penalty: right
    ("sigmoid", "W1", "X.T @ dZ1 + l2 * W1", OK),
    ("sigmoid", "W1", "X.T @ dZ1 + 0.01 * W1", OK),
    ("sigmoid", "W2", "A1.T @ (Yhat - Y) / N + lambda2 * W2", OK),
    ("sigmoid", "Z1", "(dZ2 @ W2.T) * A1 * (1 - A1)", OK),
    ("sigmoid", "Z1", "dA1 * sigmoid(Z1) * (1 - sigmoid(Z1))", OK),
    ("sigmoid", "Z1", "dA1 * np.exp(-Z1) / (1 + np.exp(-Z1))**2", OK),
    ("sigmoid", "Z2", "(Yhat - Y) / N", OK),
    ("sigmoid", "Yhat", "(Yhat - Y) / N", OK),
    ("sigmoid", "b2", "sum(Yhat - Y, axis=0) / N", OK),
    # --- sigmoid → identity / mse: wrong
    ("sigmoid", "W1", "X.T @ dZ1", "missing-term"),  # λW forgotten
    ("sigmoid", "W2", "A1.T @ dZ2 - l2 * W2", "sign"),  # the penalty's sign
    ("sigmoid", "W2", "A1.T @ (Yhat - Y) + l2 * W2", "factor"),  # 1/N forgotten in one term
    ("sigmoid", "W1", "X.T @ dA1 + l2 * W1", "activation-derivative"),
    ("sigmoid", "Z1", "dA1 * A1", None),
    # --- relu → sigmoid / binary cross-entropy: right
    ("relu", "Z1", "where(Z1 > 0, dZ2 @ W2.T, 0)", OK),
    ("relu", "Z1", "(dZ2 @ W2.T) * heaviside(Z1)", OK),
    ("relu", "Z1", "(dZ2 @ W2.T) * where(A1 > 0, 1, 0)", OK),
    ("relu", "Z2", "(Yhat - Y) / N", OK),
    ("relu", "Z2", "dYhat * Yhat * (1 - Yhat)", OK),
    ("relu", "Yhat", "(Yhat - Y) / (Yhat * (1 - Yhat)) / N", OK),
    ("relu", "W2", "A1.T @ dZ2", OK),
    ("relu", "b2", "np.sum(dZ2, axis=0)", OK),
    # --- relu → sigmoid / binary cross-entropy: wrong
    ("relu", "Z1", "dZ2 @ W2.T", "activation-derivative"),
    ("relu", "W1", "X.T @ dA1", "activation-derivative"),
    ("relu", "Z2", "dYhat", "activation-derivative"),  # the output's σ′ left out
    ("relu", "Z2", "Yhat - Y", "factor"),
    ("relu", "W2", "dZ2.T @ A1", "transposed"),
    ("relu", "b2", "sum(dZ2, axis=1)", "axis"),
    # --- three layers: right, and mix-ups between layers
    ("deep", "A1", "dZ2 @ W2.T", OK),
    ("deep", "Z2", "(dZ3 @ W3.T) * where(Z2 > 0, 1, 0)", OK),
    ("deep", "W1", "X.T @ ((dZ2 @ W2.T) * (1 - A1**2))", OK),
    ("deep", "A1", "dZ2 @ W3.T", "layer"),  # W3 where W2 belongs
    ("deep", "W2", "A2.T @ dZ2", "layer"),  # A2 where A1 belongs
    ("deep", "W3", "A1.T @ dZ2", "layer"),  # ∂L/∂W2, not ∂L/∂W3
    ("deep", "Z1", "(dZ3 @ W3.T) * (1 - A1**2)", "shape"),  # two layers off: no single fix
    # --- batchnorm → relu → dropout: right, and the classic mistakes
    ("bn", "A1", "(1/N) / np.sqrt(var2 + eps) * (N*dXhat2 - dXhat2.sum(axis=0)"
     " - Xhat2 * (dXhat2*Xhat2).sum(axis=0))", OK),
    ("bn", "A1", "(1/N) / np.sqrt(var2 + eps) * (N*dXhat2 - Xhat2 * (dXhat2*Xhat2).sum(axis=0))",
     "mean-path"),
    ("bn", "A1", "(1/N) / np.sqrt(var2 + eps) * (N*dXhat2 - dXhat2.sum(axis=0))", "variance-path"),
    ("bn", "A1", "(1/N) / np.sqrt(var2 + eps) * (N*dXhat2 - dXhat2.sum(axis=0)"
     " - N/(N-1) * Xhat2 * (dXhat2*Xhat2).sum(axis=0))", "unbiased-variance"),
    ("bn", "A2", "dZ3 * M3", "dropout-scale"),
    ("bn", "A2", "dZ3 / (1 - p)", "dropout-mask"),
    # --- layernorm residual: the wrong axis, the skip forgotten
    ("ln", "A1", "dZ3 + (1/n1) / np.sqrt(var2 + eps) * (n1*dXhat2 - dXhat2.sum(axis=0)"
     " - Xhat2 * (dXhat2*Xhat2).sum(axis=0))", "norm-axis"),
    ("ln", "A1", "(1/n1) / np.sqrt(var2 + eps) * (n1*dXhat2 - dXhat2.sum(axis=1, keepdims=True)"
     " - Xhat2 * (dXhat2*Xhat2).sum(axis=1, keepdims=True))", "skip"),
    # --- A1 feeds layers 2 and 3: its gradient is the sum of both paths
    ("fan", "A1", "dZ2 @ W2.T", "fan-out"),
    ("fan", "A1", "dZ2 @ W2.T + dZ3 @ W3.T", OK),
    # --- a concat: column slices of its cotangent (bounds in widths), numpy's axis=-1
    ("cat", "A1", "dZ3[:, :n1]", OK),
    ("cat", "Z2", "dZ3[:, n1:n1 + n2]", OK),
    ("cat", "W1", "X.T @ (dZ3[:, 0:n1] * (1 - A1**2))", OK),
    ("cat", "A1", "dZ3[:, n1:n1 + n2]", "other-gradient"),  # A2's columns
    ("cat", "Z1", "dZ3[:, :n1]", "activation-derivative"),
    # --- on images (symgrad.verify's names and functions for feature maps)
    ("cnn", "W2", "im2col(A1, 2).T @ dZ2", OK),
    ("cnn", "A1", "col2im(dZ2 @ W2.T, 2)", OK),
    ("cnn", "W2", "np.rot90(hwio(P2.T @ dZ2, 2), 2)", "flipped-kernel"),
    ("cnn", "A1", "scatter(dZ2 @ W2.T, 2)", "col2im-overwrite"),
    ("cnn", "A1", "col2im(dZ2 @ W2.T, 2, 1, 1)", "stride"),
    ("cnn", "W2", "im2col(A1, 2, 2, 0).T @ dZ2", "padding"),
    ("cnn", "A2", "spread(dZ3, 3)", "maxpool-average"),
    ("cnn", "A2", "ties(dZ3, 3)", "maxpool-ties"),
    ("cnn", "A3", "4 * spread(dZ4, 4)", "avgpool-scale"),
    ("cnn", "A4", "unflatten_nchw(dZ5, 5)", "flatten-order"),
    ("ln", "A1", "dZ3 + (dXhat2 - mean(dXhat2, axis=-1, keepdims=True) - Xhat2 * mean(dXhat2"
     " * Xhat2, axis=-1, keepdims=True)) / np.sqrt(var2 + eps)", OK),
]
