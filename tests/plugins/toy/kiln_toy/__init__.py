"""kiln-toy: a modelkiln backend (`toy`), its stage (`toystamp`) and a scheme (`toymem://`)."""
