"""Publishing a saved render: tags, cover art and chapters (docs/publishing.md)."""
