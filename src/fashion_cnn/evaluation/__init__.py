"""Evaluation: batched inference, metrics, calibration and 'unknown', prediction on images, explanations."""
