"""Every Markdown file and card, written from the data structures the layers below return."""
