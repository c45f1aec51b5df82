"""Stores apply the pure decision to persisted state atomically; see :mod:`ratekeeper.stores.base`."""
