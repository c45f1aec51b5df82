"""Stores apply the pure decision to persisted state atomically (see ``base``)."""
