"""What it is trained for: loss terms added to the task loss (DEFT density, distillation, …) live here."""
