"""Device profiles (TOML, shipped as package data) and their loader.

Profiles and the loader arrive with the runtime issue.
"""
