"""Channel adapters (SMS, email, call) behind one small protocol."""
