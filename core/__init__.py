"""What every part of the service shares: settings, logging and the typed errors."""
