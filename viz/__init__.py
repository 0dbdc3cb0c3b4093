"""Plots and reports from run directories (installed as brainnet.viz; reads files only)."""
