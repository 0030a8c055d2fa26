"""Training: the loop, its state and checkpoints, run directories, augmentation, fine-tuning setup,
several processes (torchrun), TensorBoard logs."""
