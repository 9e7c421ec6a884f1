"""The journal: the SQLite store every event lives in until delivered (`store`),
its blob spool, its health and disk reserve, repair of a corrupt file, and the
dead-letter tools."""
