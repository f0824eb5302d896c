"""The diffusion runner: regenerate an indexed prompt with its own settings (diffusers)."""
