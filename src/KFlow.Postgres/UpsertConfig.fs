// The upsert sink's configuration: where the database is, the table, fields, keys and row mapper, and
// the options with their defaults; checked once (UpsertConfig.validate) when a writer is made.
namespace KFlow.Postgres

open System
open System.Collections.Generic
open System.Text.Json
open Npgsql

/// Where the sink's database is.
[<RequireQualifiedAccess; NoEquality; NoComparison>]
type PgConnection =
    /// An Npgsql connection string; the writer makes (and disposes) a pooled data source for it, with
    /// No Reset On Close (the writer leaves no session state).
    | ConnectionString of string
    /// A data source owned by the caller (its pool is shared; the writer does not dispose it).
    | DataSource of NpgsqlDataSource

/// <summary>The upsert sink's configuration.</summary>
/// <remarks>Make one with <c>UpsertConfig.create</c> (or <c>ofDictionaries</c>, <c>ofJson</c>), then change
/// fields with <c>{ config with … }</c>. Checked by <c>UpsertWriter.create</c>.</remarks>
[<NoEquality; NoComparison>]
type UpsertConfig<'a> = {
    /// The database. No default.
    Connection: PgConnection
    /// The target table: table or schema.table, exact names (see PgIdentifier). No default.
    Table: string
    /// The columns written, in the order of the row mapper's values. No default.
    Fields: string list
    /// The key columns (a subset of Fields): a primary key or unique constraint must cover exactly
    /// them. No default. Empty only in exactly-once mode: batches are then appended (plain INSERT).
    Keys: string list
    /// The row mapper: a record's values in field order (null, None or DBNull for NULL). No default;
    /// PgRow has mappers for dictionaries and JSON objects.
    Row: 'a -> obj[]
    /// Retries after transient failures. Default RetryOptions.Default (10 attempts, 100 ms to 5 s).
    Retry: RetryOptions
    /// Exactly-once mode: each batch records the source offsets it applies in a table of the sink's own,
    /// in the same statement (see ExactlyOnceOptions and UpsertWriter.sinkExactlyOnce). Default None.
    ExactlyOnce: ExactlyOnceOptions option
    /// Batches of one substream written at once by UpsertWriter.sink / sinkExactlyOnce, each on its own
    /// pooled connection; a batch sharing a key with an earlier one still in flight waits for it, so per
    /// key the table sees batches in order (see WritePipeline). 1: one batch at a time. Default 32
    /// (UpsertConfig.DefaultPipelining): the batches waiting behind a running statement are joined
    /// (Statements).
    Pipelining: int
    /// Statements (transactions) of this writer talking to the server at once, for all its substreams;
    /// the batches ready meanwhile wait and the next free statement writes them together, in one
    /// transaction (client-side group commit: fewer commits, round trips and server work per row).
    /// Default 2 (UpsertConfig.DefaultStatements: one statement runs while the next is prepared and the
    /// batches behind it join); raise it for a server with many cores, or when statements may wait on
    /// locks held by other sessions (a waiting statement holds up the batches queued behind it).
    Statements: int
    /// The most rows one statement joins from waiting batches (a batch larger than this is still
    /// written whole, alone). 1: every batch in its own transaction. Default 16,384
    /// (UpsertConfig.DefaultStatementRows).
    StatementRows: int
}

/// Building configurations.
[<RequireQualifiedAccess>]
module UpsertConfig =
    /// Batches of one substream in flight at once unless UpsertConfig.Pipelining says otherwise: 32
    /// (enough for group commit to join about 8 batches per transaction with 2 statements at once; was 4
    /// before group commit).
    [<Literal>]
    let DefaultPipelining = 32

    /// Statements of one writer talking to the server at once unless UpsertConfig.Statements says
    /// otherwise: 2.
    [<Literal>]
    let DefaultStatements = 2

    /// The most rows one statement joins from waiting batches unless UpsertConfig.StatementRows says
    /// otherwise: 16,384.
    [<Literal>]
    let DefaultStatementRows = 16384

    /// A configuration with the default retry options.
    let create
        (connection: PgConnection)
        (table: string)
        (fields: string list)
        (keys: string list)
        (row: 'a -> obj[])
        =
        {
            Connection = connection
            Table = table
            Fields = fields
            Keys = keys
            Row = row
            Retry = PgRetry.defaults
            ExactlyOnce = None
            Pipelining = DefaultPipelining
            Statements = DefaultStatements
            StatementRows = DefaultStatementRows
        }

    /// A configuration for records that are dictionaries keyed by field name (PgRow.ofDictionary).
    let ofDictionaries connection table fields keys : UpsertConfig<IDictionary<string, obj>> =
        create connection table fields keys (PgRow.ofDictionary fields)

    /// A configuration for records that are JSON objects with a property per field (PgRow.ofJson).
    let ofJson connection table fields keys : UpsertConfig<JsonElement> =
        create connection table fields keys (PgRow.ofJson fields)

    /// The configuration with up to <c>inFlight</c> batches of one substream written at once (1: one
    /// at a time). Default 32.
    let withPipelining (inFlight: int) (config: UpsertConfig<'a>) = { config with Pipelining = inFlight }

    /// The configuration with at most <c>statements</c> statements of the writer at once, each joining
    /// waiting batches up to <c>rows</c> rows (see UpsertConfig.Statements and StatementRows). Defaults
    /// 2 and 16,384.
    let withGroupCommit (statements: int) (rows: int) (config: UpsertConfig<'a>) = {
        config with
            Statements = statements
            StatementRows = rows
    }

    /// The configuration with other retry options.
    let withRetry (retry: RetryOptions) (config: UpsertConfig<'a>) = { config with Retry = retry }

    /// The configuration in exactly-once mode for the workflow's consumer group, with the default
    /// offsets table (kflow_applied_offsets).
    let withExactlyOnce (groupId: string) (config: UpsertConfig<'a>) = {
        config with
            ExactlyOnce = Some(ExactlyOnceOptions.create groupId)
    }


    let private invalid (message: string) =
        raise (ArgumentException(message, "config"))

    /// Checks a configuration before anything connects: ArgumentException naming the setting and what
    /// to do (UpsertWriter.create calls it first).
    let internal validate (config: UpsertConfig<'a>) =
        if List.isEmpty config.Fields then
            invalid "UpsertConfig.Fields is empty; list the columns to write, in the row mapper's order."

        match config.Fields |> List.countBy id |> List.filter (fun (_, n) -> n > 1) with
        | [] -> ()
        | duplicates ->
            let names = duplicates |> List.map fst |> String.concat ", "
            invalid $"UpsertConfig.Fields names {names} more than once; name each column once."

        if List.isEmpty config.Keys && config.ExactlyOnce.IsNone then
            invalid
                "UpsertConfig.Keys is empty; list the key columns (covered by the table's primary key or a \
                 unique constraint). Appending without keys is safe only in exactly-once mode \
                 (UpsertConfig.withExactlyOnce)."

        match config.ExactlyOnce with
        | Some exactly when String.IsNullOrWhiteSpace exactly.GroupId ->
            invalid
                "ExactlyOnceOptions.GroupId is empty; give the workflow's consumer group (WorkflowOptions.GroupId)."
        | Some exactly when String.IsNullOrWhiteSpace exactly.OffsetsTable ->
            invalid
                $"ExactlyOnceOptions.OffsetsTable is empty; name the sink's offsets table (default \
                  {ExactlyOnceOptions.DefaultOffsetsTable})."
        | _ -> ()

        match config.Keys |> List.filter (fun key -> not (List.contains key config.Fields)) with
        | [] -> ()
        | missing ->
            let names = missing |> String.concat ", "

            invalid
                $"Key column(s) {names} are not in UpsertConfig.Fields; every key is written, so add them to Fields."

        if List.distinct config.Keys <> config.Keys then
            invalid "UpsertConfig.Keys names a column more than once; name each key column once."

        if obj.ReferenceEquals(config.Row, null) then
            invalid "UpsertConfig.Row is null; give a row mapper (see PgRow)."

        PgRetry.validate config.Retry

        if config.Pipelining < 1 then
            invalid
                $"UpsertConfig.Pipelining must be ≥ 1 (got {config.Pipelining}); it is how many batches of one \
                  substream are written at once (1: one at a time; default {DefaultPipelining})."

        if config.Statements < 1 then
            invalid
                $"UpsertConfig.Statements must be ≥ 1 (got {config.Statements}); it is how many statements of the \
                  writer talk to the server at once (default {DefaultStatements})."

        if config.StatementRows < 1 then
            invalid
                $"UpsertConfig.StatementRows must be ≥ 1 (got {config.StatementRows}); it is the most rows one \
                  statement joins from waiting batches (1: none joined; default {DefaultStatementRows})."
