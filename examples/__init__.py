"""Tenant apps that ship with Switchboard; `switchboard serve` runs `examples.dabble:app`."""
