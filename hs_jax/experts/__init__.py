"""Expert pools: LoRA stacks with PEFT import and export (`lora`), training a pool of LoRA
experts and writing it whole (`pool`), and full-weight experts of one architecture
(`full_models`)."""
