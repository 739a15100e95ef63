"""Experiments: the recipes the papers call (fit this model on digits, run GD with sharpness
tracking, refine a schedule on digits, retrain without some examples ...).

This layer sits above the capabilities: it may load datasets (`workbench.data`), build models
(`workbench.models`) and train them (`workbench.train`), then hand pure functions and pytrees to
the capabilities. No capability imports it. One module per paper family, imported on use:

- `digits`: a classifier and the tour's MLP fitted on scikit-learn's digits;
- `spectra`: GD with sharpness tracking (edge of stability), exact against sketched eigenvalues;
- `sketching`: Schioppa (2024)'s findings on our models (the sketching and intrinsic-dimension
  papers);
- `influence`: the digits logistic regression at its exact optimum and the estimators compared;
- `schedules`: schedule refinement on digits;
- `icl`: linear self-attention trained on regression tasks, against GD / GD++ / Newton;
- `unlearning`, `diffusion_unlearning`: models from many seeds, forget sets, every method judged
  against retrained oracles; the tiny digits DDPM and class forgetting;
- `distributed`: the distributed-minimisation paper's multi-process job;
- `timing`: wall-clock timing (the fastest of a few runs) for recipes and benchmarks.
"""
