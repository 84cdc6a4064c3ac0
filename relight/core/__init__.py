"""The leaves every feature may use: configuration, the database and its tables, errors,
request parameters, images, storage, metrics, logging and small shared helpers. Nothing here
imports a feature package (`relight.jobs`, `relight.credits`, ...) or a web framework."""
