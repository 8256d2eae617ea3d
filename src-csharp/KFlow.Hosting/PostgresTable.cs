// Where a PostgreSQL sink writes: the table, its key columns, optionally its own connection string
// and columns; checked at Build() (settings) and at start (the table itself).
using System;
using System.Collections.Generic;
using System.Linq;

namespace KFlow.Hosting;

/// <summary>The target of <c>ToPostgres</c>: a table upserted by key. Immutable; change it with the
/// <c>With…</c> methods or <c>with { … }</c>.</summary>
public sealed record PostgresTable
{
    private PostgresTable(string table, IReadOnlyList<string> keys)
    {
        Table = table;
        Keys = keys;
    }

    /// <summary>The table, <c>table</c> or <c>schema.table</c>; names are exact (case-sensitive).</summary>
    public string Table { get; init; }

    /// <summary>The key columns; a primary key or unique constraint must cover exactly them.</summary>
    public IReadOnlyList<string> Keys { get; init; }

    /// <summary>The columns written. Default null: every mapped property of the row type
    /// (<see cref="PostgresColumns.Of{TRow}"/>).</summary>
    public IReadOnlyList<string>? Columns { get; init; }

    /// <summary>The Npgsql connection string. Default null: <see cref="PostgresSettings.ConnectionString"/>.</summary>
    public string? ConnectionString { get; init; }

    /// <summary>Table <paramref name="table"/> upserted by <paramref name="keys"/>.</summary>
    public static PostgresTable Named(string table, params string[] keys) => new(table ?? "", keys ?? Array.Empty<string>());

    /// <summary>This table written through its own connection string.</summary>
    public PostgresTable WithConnectionString(string connectionString) => this with { ConnectionString = connectionString };

    internal IEnumerable<string> Problems()
    {
        if (string.IsNullOrWhiteSpace(Table))
            yield return "ToPostgres: the table name must not be empty.";
        if (Keys.Count == 0 || Keys.Any(string.IsNullOrWhiteSpace))
            yield return $"ToPostgres: table '{Table}' needs at least one key column (PostgresTable.Named(table, keys)).";
        if (ConnectionString is not null && string.IsNullOrWhiteSpace(ConnectionString))
            yield return "ToPostgres: ConnectionString is blank; leave it null to use KFlow:Postgres:ConnectionString.";
    }
}
