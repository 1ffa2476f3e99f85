"""Topic and payload conventions spoken to the cloud."""
