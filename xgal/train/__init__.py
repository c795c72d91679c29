"""Training: the networks (`nets`), the training loop with the Grad-CAM guidance loss and the
evaluation (`fit`), and the one torch implementation of CAM -> upsample -> min-max -> soft Dice
(`gradcam`) that training, evaluation and the exported graph share."""
