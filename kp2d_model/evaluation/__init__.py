"""HPatches evaluation: loader, metrics, driver, baselines, synthetic benchmark generator and plots."""
