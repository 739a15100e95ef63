"""Experiments: the recipes the papers call (fit this model on digits, run GD with sharpness
tracking, refine a schedule on digits, retrain without some examples ...).

This layer sits above the capabilities: it may load datasets (`workbench.data`), build models
(`workbench.models`) and train them (`workbench.train`), then hand pure functions and pytrees to
the capabilities. No capability imports it. One module per paper family, imported on use:

- `digits`: a classifier and the tour's MLP fitted on scikit-learn's digits;
- `spectra`: GD with sharpness tracking (edge of stability), exact against sketched eigenvalues;
- `sketching`, `sketching_metrics`: Schioppa (2024)'s tables on our models, and the paper's
  recorded metrics read off them;
- `intrinsic_dimension`: the digits intrinsic-dimension sweep and doubling search;
- `influence`: the digits logistic regression at its exact optimum and the estimators compared;
- `schedules`: schedule refinement on digits;
- `icl`: linear self-attention trained on regression tasks, against GD / GD++ / Newton;
- `unlearning`, `unlearning_sweeps`, `diffusion_unlearning`: models from many seeds, forget sets,
  every method judged against retrained oracles; the ascent cliff and SSD sweeps; the tiny
  digits DDPM and class forgetting;
- `distributed`, `distributed_problems`: the distributed-minimisation paper's multi-process job
  and its losses and synthetic data;
- `continual`: digits and text task streams, settings of schedule x replay trained over seeds in
  one vmapped call, their summary against joint training, curvature and the linear path along a run;
- `transport`: the neural-transport methods by name, fitted on problems with a known map and
  scored (L2-UVP, cost against W2^2, W2 against the floor) over seeds;
- `timing`: wall-clock timing (the fastest of a few runs) for recipes and benchmarks.
"""
