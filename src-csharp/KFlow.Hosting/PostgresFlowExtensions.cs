// ToPostgres: the sink that upserts batches of POCOs/records into a table, or writes each message once
// in exactly-once mode (KFlow.Postgres through its C# face), mapping properties to columns by name.
using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading.Tasks;
using KFlow.Postgres;

namespace KFlow.Hosting;

/// <summary>PostgreSQL sinks for flows of batches.</summary>
public static class PostgresFlowExtensions
{
    /// <summary>Ends the pipeline by upserting each batch into <paramref name="table"/> in one
    /// transaction (the last row per key in a batch wins; replays are idempotent). Properties map to
    /// columns by name (see <see cref="PostgresColumns"/>). The table, its columns and its key are
    /// checked when the workflow starts; transient errors are retried (10 attempts, 100 ms to 5 s). Up to
    /// <see cref="PostgresTable.Pipelining"/> batches of one substream are written at once (default 32),
    /// in order per key.
    /// With <see cref="PostgresTable.WithExactlyOnce"/> each batch also records its messages' offsets
    /// for the workflow's group in the same statement, and each message is applied once (see
    /// <see cref="PostgresTable.ExactlyOnce"/>).</summary>
    public static WorkflowBuilder ToPostgres<TRow>(this Flow<IReadOnlyList<TRow>> flow, PostgresTable table)
    {
        ArgumentNullException.ThrowIfNull(flow);
        ArgumentNullException.ThrowIfNull(table);
        var columns = table.Columns ?? PostgresColumns.Of<TRow>();
        var problems = table.Problems().ToList();
        var known = PostgresColumns.Of<TRow>();
        if (columns.Count == 0)
            problems.Add($"ToPostgres: {typeof(TRow).Name} has no public property to write; give it properties or set PostgresTable.Columns.");
        problems.AddRange(columns.Where(c => !known.Contains(c)).Select(c =>
            $"ToPostgres: column '{c}' is not a property of {typeof(TRow).Name} (its columns: {string.Join(", ", known)}); use [Column(\"{c}\")] on the property."));
        problems.AddRange(table.Keys.Where(k => !columns.Contains(k)).Select(k =>
            $"ToPostgres: key column '{k}' is not among the columns written ({string.Join(", ", columns)})."));
        var positions = columns.Select(c => known.ToList().IndexOf(c)).ToArray();
        var all = PostgresColumns.Row<TRow>();
        Func<TRow, object?[]> row = positions.SequenceEqual(Enumerable.Range(0, known.Count))
            ? all
            : r =>
            {
                var values = all(r);
                return positions.Select(p => p < 0 ? null : values[p]).ToArray();
            };
        var withProblems = problems.Aggregate(flow, (f, p) => f with { Problems = f.Problems.Add(p) });
        var sinkName = "postgres:" + table.Table;
        var values = new Func<TRow, object[]>(r => row(r)!);
        if (table.ExactlyOnce)
        {
            var groupId = flow.GroupId;
            return withProblems.EndWith(sinkName, async ctx =>
            {
                var writer = await UpsertWriterCore.CreateExactlyOnceAsync(ConnectionString(table, ctx), table.Table,
                    columns, table.Keys, values, groupId, table.OffsetsTable!, table.Pipelining, table.Statements,
                    table.StatementRows).ConfigureAwait(false);
                ctx.Resources.Add(writer);
                return pipe => UpsertWriterCore.SinkExactlyOnce(pipe, sinkName, writer, new Action<int>(n => ctx.AddWritten(n)));
            });
        }

        return withProblems.EndWith(sinkName, async ctx =>
        {
            var writer = await UpsertWriterCore.CreateAsync(ConnectionString(table, ctx), table.Table, columns,
                table.Keys, values, table.Pipelining, table.Statements, table.StatementRows).ConfigureAwait(false);
            ctx.Resources.Add(writer);
            return pipe => UpsertWriterCore.Sink(pipe, sinkName, writer, new Action<int>(n => ctx.AddWritten(n)));
        });
    }

    private static string ConnectionString(PostgresTable table, RunContext ctx)
    {
        var connection = table.ConnectionString ?? ctx.Options.Postgres.ConnectionString;
        if (string.IsNullOrWhiteSpace(connection))
            throw new ArgumentException(
                $"ToPostgres('{table.Table}'): no connection string; set KFlow:Postgres:ConnectionString " +
                "(appsettings.json, env KFlow__Postgres__ConnectionString, or --KFlow:Postgres:ConnectionString=...) " +
                "or PostgresTable.WithConnectionString.");
        return connection;
    }

    /// <summary>Ends the pipeline by upserting each batch into <paramref name="table"/> keyed by
    /// <paramref name="keys"/>; see <see cref="ToPostgres{TRow}(Flow{IReadOnlyList{TRow}}, PostgresTable)"/>.</summary>
    public static WorkflowBuilder ToPostgres<TRow>(
        this Flow<IReadOnlyList<TRow>> flow,
        string table,
        params string[] keys) =>
        flow.ToPostgres(PostgresTable.Named(table, keys));
}
