"""Config compilation: compose (Hydra defaults + env.toml + overrides), resolve artifacts, compile eval.yaml."""
