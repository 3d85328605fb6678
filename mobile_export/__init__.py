"""Bundles into mobile app projects: `android` (LiteRT assets, model-info.json, Kotlin runner); `common` for all."""
