"""Layer rules for the vmap executor (:mod:`~landscape_widgets.batched`): how a layer whose weights move runs for a
chunk of points at once.

- ``"vmap"``: ``torch.func.vmap``'s own rule (grouped convolutions, batched GEMMs);
- ``"im2col"`` (:mod:`.im2col`): im2col and one batched GEMM for 2-D convolutions;
- ``"affine"`` (:mod:`.affine`): the plane's affine structure, a shared first layer once for all points and later
  convolutions as one ordinary convolution;
- ``"triton"`` (:mod:`.triton`): the affine rule with each point's 2-D convolution in one Triton kernel (CUDA).

Which rule runs is the chooser's decision (:mod:`~landscape_widgets.chooser`); a rule without a device measurement in
``benchmarks/RESULTS.md`` is never chosen on its own, only when asked for (``evaluator="vmap:<rule>"``).
"""
