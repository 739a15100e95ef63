"""Running the papers: the bottom layer, which may import everything above it.

- `papers`: the paper registry (notebook headers, typed parameters, profiles);
- `claims`: what a paper asserts about its metrics, checked after every run;
- `runner`: one paper run end to end with papermill into `runs/NAME/<time>-<hash>/`;
- `results`: `record(...)` and `save_figure(...)`, what a notebook writes into its run;
- `lab`: JupyterLab working copies of the papers; `workshop`: every paper as a voila app;
- `compilation_cache`: JAX's persistent compilation cache;
- `cli`: `python -m workbench list | describe | run | lab | workshop`.
"""
