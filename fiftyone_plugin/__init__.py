"""The adapter between FiftyOne and the faceaudit core: dataset schema, bulk reads and writes,
aggregations and views. Operators, panels and the CLI call the functions here."""
