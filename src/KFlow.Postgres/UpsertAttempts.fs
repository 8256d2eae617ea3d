// One attempt at writing a batch's prepared rows by the writer's method: Unnest (insert first while
// keys are new, a COPY into the table for a large batch of new keys) or Copy (a temp table); no retry.
namespace KFlow.Postgres

open System
open System.Runtime.ExceptionServices
open System.Threading
open System.Threading.Tasks
open Npgsql
open NpgsqlTypes
open KFlow

/// Rows from which a statement of new, distinct keys is first tried as a binary COPY into the table:
/// 2,000 (the server's CPU per row, measured: COPY 1.84 µs against INSERT 1.67 at 1,000 rows; 1.19
/// against 1.66-1.74 at 3,300-3,700 rows).
[<AutoOpen>]
module internal UpsertThresholds =
    [<Literal>]
    let CopyRows = 2000

/// <summary>The attempts of one writer: each opens a pooled connection, writes the rows in one
/// transaction and tells how many of the batch's offsets were recorded before (exactly-once mode; 0
/// otherwise, -1 when fenced). The writer retries them (PgRetry). Thread-safe.</summary>
[<Sealed>]
type internal UpsertAttempts
    (dataSource: NpgsqlDataSource, table: PgIdentifier, columns: PgColumn[], statements: UpsertStatements) =
    let dbTypes = columns |> Array.map (fun c -> PgValue.dbType (Option.get c.Type))
    let mutable copies = 0L
    // Batches still to upsert directly (no insert-first try), and the current length of that run.
    let mutable upsertOnlyBatches = 0
    let mutable conflictPenalty = 0

    /// A binary COPY of the rows by `sql`: into the stage, each row after its ordinal, or (`ordinals`
    /// false) straight into the table.
    let copyWith (sql: string) (ordinals: bool) (connection: NpgsqlConnection) (rows: obj[][]) : Task = task {
        use! importer = connection.BeginBinaryImportAsync(sql)
        let mutable rowIndex = 0
        let mutable columnIndex = -1

        try
            // Synchronous writes: they fill Npgsql's buffer and only a full buffer goes to the socket
            // (loopback or network send, short), at a fraction of the client CPU of a Task per value.
            while rowIndex < rows.Length do
                let values = rows[rowIndex]
                importer.StartRow()
                columnIndex <- -1

                if ordinals then
                    importer.Write(rowIndex, NpgsqlDbType.Integer)

                columnIndex <- 0

                while columnIndex < values.Length do
                    match values[columnIndex] with
                    | null -> importer.WriteNull()
                    | value -> importer.Write<obj>(value, dbTypes[columnIndex])

                    columnIndex <- columnIndex + 1

                rowIndex <- rowIndex + 1
        with
        | :? InvalidCastException
        | :? ArgumentException
        | :? NotSupportedException as error when columnIndex >= 0 && columnIndex < columns.Length ->
            let column = columns[columnIndex]
            let value: obj = rows[rowIndex][columnIndex]
            let valueType = value.GetType().Name

            raise (
                InvalidCastException(
                    $"Column \"{column.Name}\" ({column.TypeName}) of {table}, record {rowIndex} of the batch: \
                      a {valueType} value cannot be written: {error.Message}",
                    error
                )
            )

        let! _ = importer.CompleteAsync()
        ()
    }

    /// The Copy method's first step, also how a value Npgsql cannot write is found: the rows in a new
    /// temp table (ON COMMIT DROP) with the fields' types, by a binary COPY field by field.
    let stageRows (connection: NpgsqlConnection) (transaction: NpgsqlTransaction) (rows: obj[][]) : Task = task {
        do! task {
            use command = new NpgsqlCommand(statements.CreateStage, connection, transaction)
            let! _ = command.ExecuteNonQueryAsync()
            ()
        }

        do! copyWith statements.Copy true connection rows
    }

    /// The outcome of an exactly-once statement: how many of the batch's offsets were recorded before,
    /// or -1 when the batch was fenced.
    let seenOf (result: obj) =
        match result with
        | :? int64 as n -> n
        | _ -> 0L

    /// The record parameters of a batch's positions and claims (exactly-once mode), else none.
    let recordParameters (positions: Position list) (claimed: (TopicPartition * int64)[]) =
        match statements.Applied with
        | Some offsets -> PgAppliedOffsets.recordParameters offsets positions claimed
        | None -> []

    /// One attempt of the Copy method: temp table, binary COPY, INSERT, commit. Returns how many of the
    /// batch's offsets were recorded before (exactly-once mode; 0 otherwise).
    let attemptCopy
        (positions: Position list)
        (claimed: (TopicPartition * int64)[])
        (rows: obj[][])
        (seen: int64 ref)
        ()
        : Task =
        task {
            use! connection = dataSource.OpenConnectionAsync()
            use! transaction = connection.BeginTransactionAsync()

            do! stageRows connection transaction rows

            do! task {
                use command = new NpgsqlCommand(statements.Insert, connection, transaction)

                for p in recordParameters positions claimed do
                    command.Parameters.Add p |> ignore

                let! result = command.ExecuteScalarAsync()
                seen.Value <- seenOf result
            }

            // A fenced batch wrote nothing; its transaction only drops the temp table.
            do! transaction.CommitAsync()
        }

    /// One attempt of the Unnest method: the batch as one array per field, one statement.
    let attemptUnnest
        (positions: Position list)
        (claimed: (TopicPartition * int64)[])
        (rows: obj[][])
        (fieldArrays: obj[][])
        (distinct: bool)
        (seen: int64 ref)
        ()
        : Task =
        task {
            use! connection = dataSource.OpenConnectionAsync()

            /// Runs one statement over the batch's arrays: Ok true, Ok false on a unique violation when
            /// `conflictIsFine`, Error for a value Npgsql cannot write.
            let execute (sql: string) (conflictIsFine: bool) = task {
                use command = new NpgsqlCommand(sql, connection)

                for i in 0 .. columns.Length - 1 do
                    command.Parameters.Add(
                        NpgsqlParameter(
                            NpgsqlDbType = (NpgsqlDbType.Array ||| dbTypes[i]),
                            Value = fieldArrays[i]
                        )
                    )
                    |> ignore

                for p in recordParameters positions claimed do
                    command.Parameters.Add p |> ignore

                try
                    // Prepared statements persist on Npgsql's pooled physical connections: parsed and
                    // planned once per connection, not once per batch.
                    do! command.PrepareAsync()
                    let! result = command.ExecuteScalarAsync()
                    seen.Value <- seenOf result
                    return Ok true
                with
                | :? PostgresException as error when
                    conflictIsFine && error.SqlState = PostgresErrorCodes.UniqueViolation
                    ->
                    return Ok false
                | :? InvalidCastException
                | :? NotSupportedException
                | :? ArgumentException as error -> return Error error
            }

            // Insert first while batches bring new keys (a plain INSERT is much cheaper than ON CONFLICT);
            // after a conflict, upsert directly for a number of batches that doubles while conflicts go on.
            let optimistic = Volatile.Read &upsertOnlyBatches <= 0

            if not optimistic then
                Interlocked.Decrement &upsertOnlyBatches |> ignore

            let unnest, unnestInsert =
                if distinct then
                    statements.UnnestDistinct, statements.UnnestInsertDistinct
                else
                    statements.Unnest, statements.UnnestInsert

            // A large statement of distinct keys first tries a binary COPY straight into the table (the
            // server's bulk-insert path): measured a third less server CPU per row than the INSERT at
            // 3,300-3,700 rows, but more at 1,000 (CopyRows).
            let copyInto () = task {
                try
                    use! transaction = connection.BeginTransactionAsync()
                    do! copyWith statements.CopyInto false connection rows
                    do! transaction.CommitAsync()
                    Interlocked.Increment &copies |> ignore
                    return Ok true
                with
                | :? PostgresException as error when error.SqlState = PostgresErrorCodes.UniqueViolation ->
                    return Ok false
                | :? InvalidCastException
                | :? NotSupportedException
                | :? ArgumentException as error -> return Error error
            }

            let! inserted =
                if optimistic && distinct && statements.Applied.IsNone && rows.Length >= CopyRows then
                    copyInto ()
                elif optimistic then
                    execute unnestInsert true
                else
                    Task.FromResult(Ok false)

            let! outcome =
                match inserted with
                | Ok true ->
                    Volatile.Write(&conflictPenalty, 0)
                    Task.FromResult(Ok true)
                | Ok false ->
                    if optimistic then
                        let penalty = min 1024 (max 1 (2 * Volatile.Read &conflictPenalty))
                        Volatile.Write(&conflictPenalty, penalty)
                        Volatile.Write(&upsertOnlyBatches, penalty)

                    execute unnest false
                | Error error -> Task.FromResult(Error error)

            match outcome with
            | Ok _ -> ()
            | Error error ->
                // A value Npgsql cannot write: find its column and record with the Copy method's field-by-field
                // writes into a temp table that is rolled back; raise the original error if that passes.
                use! transaction = connection.BeginTransactionAsync()

                do! stageRows connection transaction rows
                do! transaction.RollbackAsync()
                ExceptionDispatchInfo.Capture(error).Throw()
        }

    /// Statements committed by a binary COPY straight into the table, since the writer was made.
    member _.Copies = Interlocked.Read &copies

    /// <summary>The attempt writing <paramref name="rows"/> (positions and claims: their source messages
    /// and the claims on their partitions, recorded in exactly-once mode) by the writer's method; it sets
    /// <paramref name="seen"/> to how many of the offsets were recorded before (-1: fenced). Unnest's
    /// arrays are made once, here, for all the attempts.</summary>
    member _.Attempt
        (
            positions: Position list,
            claimed: (TopicPartition * int64)[],
            rows: obj[][],
            distinct: bool,
            seen: int64 ref
        ) : unit -> Task =
        match statements.Method with
        | UpsertMethod.Copy -> attemptCopy positions claimed rows seen
        | UpsertMethod.Unnest ->
            let fieldArrays =
                Array.init columns.Length (fun i -> rows |> Array.map (fun row -> row[i]))

            attemptUnnest positions claimed rows fieldArrays distinct seen
