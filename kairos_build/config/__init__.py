"""Configuration: the settings table (every option, declared once), the config file and
`--set`, and the frozen BuildConfig a build runs on."""
