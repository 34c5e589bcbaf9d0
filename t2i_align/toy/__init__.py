"""The toy world: procedural coloured shapes in two styles, a tiny SDXL-shaped model pretrained
on it (shipped as toy_sdxl), and metrics that tell style and prompt-following apart."""
