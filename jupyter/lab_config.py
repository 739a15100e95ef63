# JupyterLab for this repository (`make lab` passes this file with --config).
# The server's root is lab/, the git-ignored working copies that workbench.run.lab makes of every paper
# (see the README, "Open the notebooks in JupyterLab"): nothing a lab session saves can reach the
# committed notebooks/ or change what `workbench run` executes.
from pathlib import Path

repo = Path(__file__).resolve().parent.parent

c.ServerApp.ip = "127.0.0.1"  # this machine only; token authentication stays on (the default)
c.ServerApp.root_dir = str(repo / "lab")
# Saved notebooks carry no widget views or widget state: a reopened notebook would show
# "Error displaying widget: model not found" for each of them.
c.ContentsManager.pre_save_hook = "workbench.run.lab.pre_save"
# No news announcements pop-up and no update check (nothing is fetched from the network).
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
# Default settings for this repository's lab (a user's own settings still win).
c.LabApp.app_settings_dir = str(repo / "jupyter" / "lab-settings")
