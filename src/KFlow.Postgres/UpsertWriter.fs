// The upsert sink's writer: a batch in, one atomic upsert out, in its place per key (WritePipeline),
// alone or joined with waiting batches (UpsertBatches); and the module making writers and sinks.
namespace KFlow.Postgres

open System
open System.Runtime.ExceptionServices
open System.Threading.Tasks
open Npgsql
open KFlow

/// <summary>Writes batches of records into a table as upserts. Thread-safe; make it with UpsertWriter.create.</summary>
/// <remarks>
/// Each batch is written atomically on a pooled connection, the last record per key winning
/// (<c>SELECT DISTINCT ON (keys) … ORDER BY keys, ordinal DESC</c>):
/// <list type="number">
/// <item>Unnest method (no array field): one prepared statement
/// <c>INSERT INTO table (fields) SELECT DISTINCT ON (keys) … FROM unnest($1, …) WITH ORDINALITY …
/// ON CONFLICT (keys) DO UPDATE SET …</c>, one array parameter per field. While batches bring only new
/// keys, the statement is first tried without ON CONFLICT (much cheaper); after a unique violation the
/// writer upserts directly for 1, 2, 4 … 1024 batches before trying again.</item>
/// <item>Copy method (an array field): in one transaction, a temp table (ON COMMIT DROP) with the
/// fields' types, a binary COPY of the batch into it, then the same INSERT … SELECT from it.</item>
/// </list>
/// The Task succeeds only once the batch is committed. Transient failures (connection lost, server
/// restarting, serialization failure, deadlock) are retried with backoff; other failures and the
/// last transient one fault the Task with a PgSinkException, and nothing of the batch is committed.
/// In exactly-once mode (UpsertConfig.ExactlyOnce) the statement also records the batch's source
/// offsets in the offsets table and writes nothing if they were recorded before (WriteApplied); with
/// no keys the rows are appended (plain INSERT).
/// </remarks>
[<Sealed>]
type UpsertWriter<'a>
    internal
    (
        dataSource: NpgsqlDataSource,
        ownsDataSource: bool,
        server: string,
        table: PgIdentifier,
        columns: PgColumn[],
        row: 'a -> obj[],
        retry: RetryOptions,
        statements: UpsertStatements,
        keyIndexes: int[],
        pipelining: int,
        statementLimit: int,
        groupRows: int
    ) =
    let types = columns |> Array.map (fun c -> Option.get c.Type)
    let mutable disposed = false
    let mutable retries = 0L

    let onTransient (error: exn) =
        Threading.Interlocked.Increment &retries |> ignore

        if PgRetry.connectionLost error then
            dataSource.Clear()

    let attempts = UpsertAttempts(dataSource, table, columns, statements)
    let claims = UpsertClaims(dataSource, table, server, retry, onTransient)

    let batches =
        UpsertBatches(
            dataSource,
            table,
            server,
            retry,
            statements,
            attempts,
            claims,
            statementLimit,
            groupRows,
            onTransient,
            fun () -> disposed
        )

    // A key column with a collation of its own (e.g. case-insensitive) may find keys equal that
    // .NET's Equals does not: its batches always go through DISTINCT ON.
    let keysByServerOnly =
        keyIndexes |> Array.exists (fun i -> columns[i].Collation.IsSome)

    /// Whether no two rows of the slot's batch share a key (its distinct keys, which the pipeline
    /// found by .NET's Equals, are as many as its rows): the batch is then written without DISTINCT ON
    /// and its sort (measured 8-15% of the statement's time).
    let keysDistinct (slot: PipelineSlot) =
        keyIndexes.Length = 0
        || (not keysByServerOnly && slot.Keys.Length = slot.Rows.Length)

    /// The records' values, checked and normalized once (not again on a retry).
    let prepare (batch: 'a list) : obj[][] =
        batch
        |> List.mapi (fun index record ->
            let values = row record

            if isNull values || values.Length <> columns.Length then
                let count = if isNull values then "null" else string values.Length

                raise (
                    ArgumentException(
                        $"The row mapper returned {count} values for record {index} of the batch, but \
                          UpsertConfig.Fields has {columns.Length}; return one value per field, in field order."
                    )
                )

            values
            |> Array.mapi (fun i value ->
                try
                    PgValue.normalize types[i] value
                with error ->
                    raise (
                        ArgumentException(
                            $"Column \"{columns[i].Name}\" ({columns[i].TypeName}) of {table}, record {index} of \
                              the batch: {error.Message}",
                            error
                        )
                    )))
        |> Array.ofList

    let pipeline =
        WritePipeline((fun batch -> prepare (unbox<'a list> batch)), keyIndexes)

    /// Writes a batch in its place in the pipeline: after the batches placed before it that share a
    /// key with it (see WritePipeline), then alone or joined (UpsertBatches), with the claims given.
    let write (positions: Position list) (claimed: (TopicPartition * int64)[]) (batch: 'a list) : Task =
        if disposed then
            Task.FromException(
                ObjectDisposedException(nameof UpsertWriter, "This upsert writer has been disposed.")
            )
        elif List.isEmpty batch then
            Task.CompletedTask
        else
            let slot = pipeline.Take(box batch)

            task {
                let mutable started = false

                try
                    do! slot.Ready

                    if not (isNull slot.Error) then
                        ExceptionDispatchInfo.Capture(slot.Error).Throw()

                    started <- true
                    pipeline.Started()

                    do!
                        batches.Submit {
                            Positions = positions
                            Claimed = claimed
                            Rows = slot.Rows
                            Distinct = keysDistinct slot
                        }

                    pipeline.Ended(slot, true, started)
                with error ->
                    pipeline.Ended(slot, false, started)
                    ExceptionDispatchInfo.Capture(error).Throw()
            }

    /// The target table (schema.table as configured).
    member _.Table = string table

    /// Tests only: false makes batches carry no claims, so they are never fenced (the behaviour before
    /// fencing, to show what it prevents). Default true.
    member internal _.CheckFence
        with get () = claims.CheckFence
        and set value = claims.CheckFence <- value

    /// The server, without the password: Host, Port, Database, Username.
    member _.Server = server

    /// How many times a batch was retried after a transient failure, since the writer was made.
    member _.Retries = Threading.Interlocked.Read &retries

    /// How batches are sent: Unnest (one statement), or Copy when a field is an array column.
    member _.Method = statements.Method

    /// The written columns' names, in field order.
    member _.Fields = columns |> Array.map _.Name |> List.ofArray

    /// <summary>How the runtime may pipeline this writer's batches (UpsertConfig.Pipelining; default 32):
    /// up to that many batches of one substream in flight, ordered per key by the writer (Reserve and
    /// Release). UpsertWriter.sink and sinkExactlyOnce declare it; Pipe.sink with UpsertWriter.write
    /// runs one batch at a time.</summary>
    member _.Pipelining: SinkPipelining =
        if pipelining <= 1 then
            SinkPipelining.sequential
        else
            SinkPipelining.create
                pipelining
                (fun batch ->
                    match batch with
                    | :? ('a list) as b when not (List.isEmpty b) -> pipeline.Reserve batch
                    | _ -> Task.CompletedTask)
                pipeline.Release

    /// Statements run and batches they wrote, since the writer was made (batches / statements: how
    /// many were joined per transaction on average).
    member internal _.GroupCommits = batches.GroupCommits

    /// Tests only: true before the first write makes an exactly-once writer join batches as a plain
    /// one does (Statements, StatementRows). Default false: exactly-once batches are never joined.
    member internal _.JoinExactlyOnce
        with get () = batches.JoinExactlyOnce
        and set value = batches.JoinExactlyOnce <- value

    /// Statements committed by a binary COPY straight into the table, since the writer was made.
    member internal _.Copies = attempts.Copies

    /// Batches talking to the server now.
    member internal _.InFlight = pipeline.InFlight

    /// The most batches that talked to the server at once, since the writer was made.
    member internal _.PeakInFlight = pipeline.Peak

    /// Keys held by batches in flight or waiting (0 once everything is released).
    member internal _.HeldKeys = pipeline.HeldKeys

    /// <summary>Writes a batch atomically; the Task succeeds once it is committed.</summary>
    /// <remarks>
    /// An empty batch does nothing. For records with the same key, the last one in the batch wins.
    /// Writing the same batch again leaves the table as it was. The Task faults with ArgumentException
    /// for a record the mapper or a column type cannot take, and with PgSinkException when the
    /// database refuses the batch or transient failures outlast the retries; then nothing of the
    /// batch was committed. In exactly-once mode use WriteApplied (this faults with
    /// InvalidOperationException).
    /// </remarks>
    member _.Write(batch: 'a list) : Task =
        match statements.Applied with
        | Some _ ->
            Task.FromException(
                InvalidOperationException(
                    $"The writer of {table} is in exactly-once mode: write batches with WriteApplied (or \
                      UpsertWriter.sinkExactlyOnce), which records their source offsets."
                )
            )
        | None -> write [] [||] batch

    /// <summary>Exactly-once mode: writes a batch and records its source positions in the offsets table,
    /// in one statement; the Task succeeds once it is committed.</summary>
    /// <remarks>If every position was recorded before (the batch was applied already), nothing is
    /// written and the Task succeeds; if only some were, nothing is written and the Task faults with
    /// PgSinkException. A retry after a lost answer is therefore safe even on an insert-only table.
    /// Without exactly-once mode the positions are ignored.</remarks>
    member _.WriteApplied(positions: Position list, batch: 'a list) : Task =
        write positions (claims.ClaimsOf positions) batch

    /// <summary>Exactly-once mode: the write of batches standing for <paramref name="positions"/>, with
    /// this writer's claims on their partitions taken now (WriteApplied takes them when called).</summary>
    /// <remarks>The runtime makes a sink's write when the batch reaches the sink, while the partition is
    /// assigned (Pipe.sinkExactlyOnce); every try of it (retries in place too) then carries the claims
    /// of that assignment, so a try after the partition moved away and back is fenced, not written
    /// with the later claim.</remarks>
    member _.ClaimedWrite(positions: Position list) : 'a list -> Task =
        let claimed = claims.ClaimsOf positions
        fun batch -> write positions claimed batch

    /// <summary>The store of applied offsets the runtime reads on assignment (exactly-once mode;
    /// InvalidOperationException otherwise). Its calls are retried like batches.</summary>
    /// <remarks>Its Load claims the partitions for this writer first: their epochs in the owners table
    /// are bumped (waiting for the batches in flight of their previous owner), and from then on a batch
    /// of another writer holding an older claim is fenced (FencedWriteException). Give each workflow
    /// instance its own writer: writers sharing one object share its claims.</remarks>
    member _.AppliedOffsets: AppliedOffsetStore =
        match statements.Applied with
        | None ->
            raise (
                InvalidOperationException(
                    $"The writer of {table} is not in exactly-once mode; set UpsertConfig.ExactlyOnce."
                )
            )
        | Some offsets -> claims.Store offsets


    /// Disposes the data source if the writer made it from a connection string.
    member _.DisposeAsync() : ValueTask =
        disposed <- true

        if ownsDataSource then
            dataSource.DisposeAsync()
        else
            ValueTask.CompletedTask

    interface IAsyncDisposable with
        member writer.DisposeAsync() = writer.DisposeAsync()

    interface IDisposable with
        member _.Dispose() =
            disposed <- true

            if ownsDataSource then
                dataSource.Dispose()

/// Making writers and writing batches.
[<RequireQualifiedAccess>]
module UpsertWriter =

    let private invalid (message: string) =
        raise (ArgumentException(message, "config"))

    /// The connection's description without its password.
    let private describeServer (connectionString: string) =
        let builder = NpgsqlConnectionStringBuilder(connectionString)

        let orDefault (value: string) =
            if String.IsNullOrEmpty value then "(default)" else value

        $"Host={orDefault builder.Host}; Port={builder.Port}; Database={orDefault builder.Database}; \
          Username={orDefault builder.Username}"


    /// <summary>Makes a writer after checking the configuration and the table.</summary>
    /// <remarks>
    /// <list type="number">
    /// <item>Checks the configuration (ArgumentException naming the setting).</item>
    /// <item>Connects (transient failures retried per config.Retry; then PgSinkException).</item>
    /// <item>Checks the table exists, has every field as a column of a supported type, and a primary
    /// key or unique constraint on exactly the keys (InvalidOperationException saying what to do).</item>
    /// </list>
    /// </remarks>
    let create (config: UpsertConfig<'a>) : Task<UpsertWriter<'a>> = task {
        UpsertConfig.validate config
        let table = PgIdentifier.parse config.Table

        let applied =
            config.ExactlyOnce
            |> Option.map (fun exactly ->
                PgAppliedOffsets.create (PgIdentifier.parse exactly.OffsetsTable) exactly.GroupId)

        let dataSource, owns =
            match config.Connection with
            | PgConnection.ConnectionString connectionString ->
                if String.IsNullOrWhiteSpace connectionString then
                    invalid "The connection string is empty; give an Npgsql connection string."

                // The writer leaves no session state behind (no SET; its temp table is ON COMMIT DROP),
                // so its own pool skips the reset on every return: about 10-20% more batches per second
                // and a third less client CPU, measured with the sink benchmark.
                let builder = NpgsqlConnectionStringBuilder(connectionString, NoResetOnClose = true)
                NpgsqlDataSource.Create builder, true
            | PgConnection.DataSource dataSource ->
                if isNull dataSource then
                    invalid "The data source is null; give an NpgsqlDataSource."

                dataSource, false

        try
            let server = describeServer dataSource.ConnectionString
            let mutable loaded = None
            let mutable ensured = None

            let load () : Task = task {
                use! connection = dataSource.OpenConnectionAsync()
                let! found = PgSchema.load connection table

                match applied with
                | Some offsets ->
                    let! resolved = PgAppliedOffsets.ensure offsets table connection
                    ensured <- Some resolved
                | None -> ()

                loaded <- Some found
            }

            let describe (error: exn) (tries: int) (transient: bool) : exn =
                match error with
                | :? InvalidOperationException as error ->
                    InvalidOperationException($"{error.Message} (Server: {server})", error)
                | _ ->
                    PgSinkException(
                        $"Could not read the schema of {table} ({server}){PgRetry.afterAttempts tries}: \
                          {error.Message}",
                        error,
                        transient
                    )

            do!
                PgRetry.run
                    config.Retry
                    (fun error ->
                        if PgRetry.connectionLost error then
                            dataSource.Clear())
                    describe
                    load

            let pgTable = Option.get loaded

            let columns =
                try
                    PgSchema.validate config.Fields config.Keys pgTable
                with :? InvalidOperationException as error ->
                    raise (InvalidOperationException($"{error.Message} (Server: {server})", error))

            return
                new UpsertWriter<'a>(
                    dataSource,
                    owns,
                    server,
                    table,
                    Array.ofList columns,
                    config.Row,
                    config.Retry,
                    UpsertStatements.create table columns config.Keys ensured,
                    config.Keys
                    |> List.map (fun key -> List.findIndex (fun f -> f = key) config.Fields)
                    |> Array.ofList,
                    config.Pipelining,
                    config.Statements,
                    config.StatementRows
                )
        with error ->
            if owns then
                dataSource.Dispose()

            ExceptionDispatchInfo.Capture(error).Throw()
            return Unchecked.defaultof<UpsertWriter<'a>>
    }

    /// <summary>Writes a batch (see UpsertWriter.Write). Partially applied, it is the sink's write
    /// function: <c>UpsertWriter.write writer : 'a list -> Task</c>.</summary>
    let write (writer: UpsertWriter<'a>) (batch: 'a list) : Task = writer.Write batch

    /// <summary>Ends a pipe of batches with the writer as a sink named <paramref name="name"/>:
    /// <c>Pipe.sinkWith writer.Pipelining name (write writer)</c>, so the runtime writes up to
    /// UpsertConfig.Pipelining batches of one substream at once (default 32), the writer keeping them
    /// in order per key.</summary>
    let sink (name: string) (writer: UpsertWriter<'a>) (pipe: Pipe<'i, 'a list>) : Pipe<'i, Sunk> =
        Pipe.sinkWith writer.Pipelining name (fun batch -> writer.Write batch) pipe

    /// <summary>Ends a pipe with the writer as an exactly-once sink named <paramref name="name"/>
    /// (Pipe.sinkExactlyOnce with the writer's AppliedOffsets and ClaimedWrite). The writer must be in
    /// exactly-once mode (UpsertConfig.withExactlyOnce) for the workflow's group.</summary>
    let sinkExactlyOnce (name: string) (writer: UpsertWriter<'a>) (pipe: Pipe<'i, 'a list>) : Pipe<'i, Sunk> =
        Pipe.sinkExactlyOnceWith writer.Pipelining name writer.AppliedOffsets writer.ClaimedWrite pipe
