"""Experiments: the recipes the papers call (fit this model on digits, run GD with sharpness
tracking, refine a schedule on digits, retrain without some examples ...).

This layer sits above the capabilities: it may load datasets (`workbench.data`), build models
(`workbench.models`) and train them (`workbench.train`), then hand pure functions and pytrees to
the capabilities. No capability imports it.
"""
