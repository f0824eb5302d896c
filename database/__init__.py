"""The database: one module says what the tables are (schema), one how to open them (connect)."""
