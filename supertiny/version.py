"""The package version (recorded in every manifest), on the ground floor so that nothing imports the package root
for it."""

__version__ = "0.1.0"
