// Writing a writer's prepared batches: one statement per batch or per group of waiting batches (client-
// side group commit), retried on transient failures, with exactly-once mode's outcomes (fenced, applied).
namespace KFlow.Postgres

open System
open System.Threading
open System.Threading.Tasks
open Npgsql
open KFlow

/// A batch ready to be written, as GroupCommit queues it: its source positions and claims
/// (exactly-once mode), its prepared rows, and whether its keys are distinct.
[<NoEquality; NoComparison>]
type internal GroupedBatch = {
    Positions: Position list
    Claimed: (TopicPartition * int64)[]
    Rows: obj[][]
    Distinct: bool
}

/// Raised by a joined exactly-once statement that wrote nothing (some of its offsets were recorded
/// before, or it was fenced): its batches are then written alone.
type internal GroupNotWritten() =
    inherit Exception("A joined statement wrote nothing; its batches are written one by one.")

/// <summary>Writes the prepared batches of one writer in statements of their own or joined
/// (GroupCommit), each retried (PgRetry) on a pooled connection. Thread-safe.</summary>
[<Sealed>]
type internal UpsertBatches
    (
        dataSource: NpgsqlDataSource,
        table: PgIdentifier,
        server: string,
        retry: RetryOptions,
        statements: UpsertStatements,
        attempts: UpsertAttempts,
        claims: UpsertClaims,
        statementLimit: int,
        groupRows: int,
        onTransient: exn -> unit,
        isDisposed: unit -> bool
    ) =

    // Writes talking to the server at once, at most the pool's size (Maximum Pool Size, Npgsql's
    // default 100): many substreams × pipelined writes otherwise queue in the pool, where a wait
    // longer than the connection string's Timeout (default 15 s) fails and is retried.
    let poolSize =
        max 1 (NpgsqlConnectionStringBuilder(dataSource.ConnectionString).MaxPoolSize)

    let connections = new SemaphoreSlim(poolSize)

    /// Runs the statement writing the prepared rows (positions: their source messages, recorded in
    /// exactly-once mode, with the claims on their partitions taken when the write was made), retrying
    /// transient failures; returns how many of the offsets were recorded before (-1: fenced).
    let statementRows
        (positions: Position list)
        (claimed: (TopicPartition * int64)[])
        (rows: obj[][])
        (distinct: bool)
        : Task<int64> =
        if isDisposed () then
            Task.FromException<int64>(
                ObjectDisposedException("UpsertWriter", "This upsert writer has been disposed.")
            )
        else
            task {
                let seen = ref 0L

                let describe =
                    PgRetry.failed $"Upsert of {rows.Length} record(s) into {table} ({server})"

                let attempt = attempts.Attempt(positions, claimed, rows, distinct, seen)

                do! connections.WaitAsync()

                try
                    do! PgRetry.run retry onTransient describe attempt
                finally
                    connections.Release() |> ignore

                return seen.Value
            }

    /// Writes the prepared rows of one batch (see statementRows) and raises when exactly-once mode
    /// wrote nothing: FencedWriteException, or PgSinkException when only some offsets were recorded.
    let writeRows
        (positions: Position list)
        (claimed: (TopicPartition * int64)[])
        (rows: obj[][])
        (distinct: bool)
        : Task =
        task {
            let! seen = statementRows positions claimed rows distinct

            if seen < 0L then
                do! claims.Fenced(Option.get statements.Applied, claimed, rows.Length)

            // In exactly-once mode nothing was written if any offset was recorded before: all of them
            // means the batch was applied already (a replay, or a retry after a commit whose answer
            // was lost); some of them means two writes overlap, which only a second owner of the
            // partition can cause.
            let total = positions |> List.distinct |> List.length |> int64

            if seen > 0L && seen < total then
                raise (
                    PgSinkException(
                        $"{seen} of the {total} source offsets of a batch for {table} ({server}) were \
                          applied already by another write, so none of it was written. Two instances \
                          may own the same partition; the workflow's restart reads the applied offsets \
                          again and skips them.",
                        null,
                        false
                    )
                )
        }

    /// <summary>Writes the batches of one statement (GroupCommit): one batch as writeRows; several in
    /// one transaction, their rows one after the other and their offsets recorded together.</summary>
    /// <remarks>The batches have no key in common (each was submitted once the batches before it on its
    /// keys were committed), so rows of different batches never meet in DISTINCT ON. In exactly-once
    /// mode a joined statement that wrote nothing (some offsets recorded before, or fenced) raises
    /// GroupNotWritten, and each batch is written again alone to find out which.</remarks>
    let writeGroup (items: GroupedBatch[]) : Task =
        if items.Length = 1 then
            let item = items[0]
            writeRows item.Positions item.Claimed item.Rows item.Distinct
        else
            task {
                let rows = items |> Array.collect _.Rows
                let positions = items |> List.ofArray |> List.collect _.Positions
                let distinct = items |> Array.forall _.Distinct
                let! seen = statementRows positions items[0].Claimed rows distinct

                if seen <> 0L then
                    raise (GroupNotWritten())
            }

    /// Which failures of a joined statement are retried batch by batch: a batch the database refuses
    /// (not transient), one Npgsql cannot send, and an exactly-once statement that wrote nothing.
    let retryAlone (error: exn) =
        match error with
        | :? GroupNotWritten -> true
        | :? PgSinkException as error -> not error.IsTransient
        | :? ArgumentException
        | :? InvalidCastException
        | :? NotSupportedException -> true
        | _ -> false

    // Exactly-once mode joins no batches and caps statements only by the pool (as before group commit):
    // a joined statement cost the server more per row the more batches it joined (its offsets
    // bookkeeping: 3.7 µs per row unjoined, 4.4 with about 2 batches, 6-6.7 with about 8), unless a
    // test turns joining on (JoinExactlyOnce). Made at the first write.
    let mutable joinExactlyOnce = false

    let groups =
        lazy
            (if statements.Applied.IsSome && not joinExactlyOnce then
                 GroupCommit<GroupedBatch>(
                     poolSize,
                     1,
                     (fun batch -> batch.Rows.Length),
                     (fun _ _ -> false),
                     retryAlone,
                     writeGroup
                 )
             else
                 GroupCommit<GroupedBatch>(
                     statementLimit,
                     groupRows,
                     (fun batch -> batch.Rows.Length),
                     (fun first next -> first.Claimed = next.Claimed),
                     retryAlone,
                     writeGroup
                 ))


    /// Writes a batch, alone or joined with others waiting meanwhile; the Task succeeds once it is
    /// committed.
    member _.Submit(batch: GroupedBatch) : Task = groups.Value.Submit batch

    /// Statements run and batches they wrote (see UpsertWriter.GroupCommits).
    member _.GroupCommits = struct (groups.Value.Statements, groups.Value.Items)

    /// Tests only: true before the first write makes an exactly-once writer join batches. Default false.
    member _.JoinExactlyOnce
        with get () = joinExactlyOnce
        and set value = joinExactlyOnce <- value
