"""Training: recipe specs, the recipes (pt, sft, dpo), their Trainer, PEFT and the run driver."""
