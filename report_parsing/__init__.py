"""report_parsing package."""
