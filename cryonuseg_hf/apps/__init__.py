"""What users run beyond the CLI: the demo, the Space app, the Hub export and push."""
