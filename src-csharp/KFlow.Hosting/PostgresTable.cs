// Where a PostgreSQL sink writes: the table, its key columns, optionally its own connection string,
// columns and exactly-once mode; checked at Build() (settings) and at start (the table itself).
using System;
using System.Collections.Generic;
using System.Linq;

namespace KFlow.Hosting;

/// <summary>The target of <c>ToPostgres</c>: a table upserted by key, or (in exactly-once mode) a table
/// written once per message. Immutable; change it with the <c>With…</c> methods or <c>with { … }</c>.</summary>
public sealed record PostgresTable
{
    private PostgresTable(string table, IReadOnlyList<string> keys)
    {
        Table = table;
        Keys = keys;
    }

    /// <summary>The table, <c>table</c> or <c>schema.table</c>; names are exact (case-sensitive).</summary>
    public string Table { get; init; }

    /// <summary>The key columns; a primary key or unique constraint must cover exactly them. Empty only
    /// in exactly-once mode: rows are then appended with a plain INSERT.</summary>
    public IReadOnlyList<string> Keys { get; init; }

    /// <summary>The columns written. Default null: every mapped property of the row type
    /// (<see cref="PostgresColumns.Of{TRow}"/>).</summary>
    public IReadOnlyList<string>? Columns { get; init; }

    /// <summary>The Npgsql connection string. Default null: <see cref="PostgresSettings.ConnectionString"/>.</summary>
    public string? ConnectionString { get; init; }

    /// <summary>Exactly-once mode: each batch records the source offsets of its messages, for the
    /// workflow's consumer group, in <see cref="OffsetsTable"/> in the same statement as its rows; on
    /// assignment the workflow resumes past the offsets already applied, so each message's effect is
    /// applied once even when the process dies between the database commit and the Kafka commit. For
    /// tables whose writes are not idempotent (append-only, counters). Needs one value per message (no
    /// <c>Unfold</c> before the sink; Build's workflow refuses it at start). Default false: upserts,
    /// where a replayed batch overwrites what it wrote before.</summary>
    public bool ExactlyOnce { get; init; }

    /// <summary>The table where exactly-once mode records applied offsets (<c>table</c> or
    /// <c>schema.table</c>), created at start if missing; several sinks and groups may share it. Default
    /// null: <c>kflow_applied_offsets</c>. Rewinding the group's offsets does not re-apply messages still
    /// recorded there; delete the group's rows first.</summary>
    public string? OffsetsTable { get; init; }

    /// <summary>Batches of one substream (a partition, or a key after <c>Demux</c>) written at once, each on
    /// its own pooled connection; a batch sharing a key with an earlier one still in flight waits for it,
    /// so per key the table sees the batches in order. 1 writes one batch at a time. Lower it when many
    /// substreams write at once (each may hold this many connections of the pool). Default 32 (the
    /// writer joins the batches waiting behind its running statements into one transaction).</summary>
    public int Pipelining { get; init; } = 32;

    /// <summary>Statements (transactions) of this table's writer talking to the server at once, for all
    /// substreams; the batches ready meanwhile are joined into the next one (group commit: fewer commits
    /// and less server work per row). Raise it for a server with many cores, or when statements may wait
    /// on locks held by other sessions (a waiting statement holds up the batches queued behind it). Default 2
    /// (one statement runs while the next is prepared).</summary>
    public int Statements { get; init; } = 2;

    /// <summary>The most rows one statement of this table's writer joins from waiting batches (a batch
    /// larger than this is still written whole, alone). 1 writes every batch in its own transaction.
    /// Default 16,384.</summary>
    public int StatementRows { get; init; } = 16384;

    /// <summary>Table <paramref name="table"/> upserted by <paramref name="keys"/>.</summary>
    public static PostgresTable Named(string table, params string[] keys) => new(table ?? "", keys ?? Array.Empty<string>());

    /// <summary>This table written through its own connection string.</summary>
    public PostgresTable WithConnectionString(string connectionString) => this with { ConnectionString = connectionString };

    /// <summary>This table written in exactly-once mode (see <see cref="ExactlyOnce"/>), its applied
    /// offsets recorded in <paramref name="offsetsTable"/> (default null: <c>kflow_applied_offsets</c>).</summary>
    public PostgresTable WithExactlyOnce(string? offsetsTable = null) =>
        this with { ExactlyOnce = true, OffsetsTable = offsetsTable };

    /// <summary>This table written with up to <paramref name="inFlight"/> batches of one substream at
    /// once (see <see cref="Pipelining"/>; default 32, 1: one at a time).</summary>
    public PostgresTable WithPipelining(int inFlight) => this with { Pipelining = inFlight };

    /// <summary>This table written with up to <paramref name="statements"/> statements at once (see
    /// <see cref="Statements"/>; default 2).</summary>
    public PostgresTable WithStatements(int statements) => this with { Statements = statements };

    /// <summary>This table written with statements joining up to <paramref name="rows"/> rows of waiting
    /// batches (see <see cref="StatementRows"/>; default 16,384, 1: every batch in its own transaction).</summary>
    public PostgresTable WithStatementRows(int rows) => this with { StatementRows = rows };

    internal IEnumerable<string> Problems()
    {
        if (Pipelining < 1)
            yield return $"ToPostgres: table '{Table}' has Pipelining {Pipelining}; it must be at least 1 (1 writes one batch at a time; default 32).";
        if (Statements < 1)
            yield return $"ToPostgres: table '{Table}' has Statements {Statements}; it must be at least 1 (statements of the writer at once; default 2).";
        if (StatementRows < 1)
            yield return $"ToPostgres: table '{Table}' has StatementRows {StatementRows}; it must be at least 1 (the most rows one statement joins from waiting batches, 1: none joined; default 16,384).";
        if (string.IsNullOrWhiteSpace(Table))
            yield return "ToPostgres: the table name must not be empty.";
        if (Keys.Count == 0 && !ExactlyOnce)
            yield return $"ToPostgres: table '{Table}' needs at least one key column (PostgresTable.Named(table, keys)), " +
                         "or exactly-once mode to append rows (PostgresTable.WithExactlyOnce()).";
        if (Keys.Any(string.IsNullOrWhiteSpace))
            yield return $"ToPostgres: table '{Table}' has a blank key column; name every key column.";
        if (OffsetsTable is not null && (string.IsNullOrWhiteSpace(OffsetsTable) || !ExactlyOnce))
            yield return "ToPostgres: OffsetsTable is set but blank or without ExactlyOnce; use PostgresTable.WithExactlyOnce(offsetsTable).";
        if (ConnectionString is not null && string.IsNullOrWhiteSpace(ConnectionString))
            yield return "ToPostgres: ConnectionString is blank; leave it null to use KFlow:Postgres:ConnectionString.";
    }
}
