// Exactly-once mode's claims of one writer: the epoch it holds per partition (taken by the applied
// offsets' Load), the claims each batch carries, and the error of a batch fenced for stale claims.
namespace KFlow.Postgres

open System
open System.Collections.Concurrent
open System.Threading.Tasks
open Npgsql
open KFlow

/// <summary>The claims of one writer on source partitions (exactly-once mode), and its store of applied
/// offsets, whose Load takes them. Thread-safe.</summary>
[<Sealed>]
type internal UpsertClaims
    (
        dataSource: NpgsqlDataSource,
        table: PgIdentifier,
        server: string,
        retry: RetryOptions,
        onTransient: exn -> unit
    ) =
    // The epoch of each partition this writer claimed last (AppliedOffsets.Load).
    let claims = ConcurrentDictionary<TopicPartition, int64>()

    let claimedBy = $"{Environment.MachineName} pid {Environment.ProcessId}"
    let mutable checkFence = true

    /// Tests only: false makes batches carry no claims, so they are never fenced. Default true.
    member _.CheckFence
        with get () = checkFence
        and set value = checkFence <- value

    /// The claims a batch carries: the epoch this writer holds for each partition of its positions (0 if
    /// it claimed none), read once when the write starts, so its retries carry the same claims.
    member _.ClaimsOf(positions: Position list) =
        if not checkFence then
            [||]
        else
            positions
            |> List.map _.TopicPartition
            |> List.distinct
            |> List.map (fun tp ->
                match claims.TryGetValue tp with
                | true, epoch -> tp, epoch
                | _ -> tp, 0L)
            |> Array.ofList

    /// Raises the FencedWriteException of a batch refused for its stale claims, naming the current owners.
    member _.Fenced(offsets: PgAppliedOffsets, claimed: (TopicPartition * int64)[], count: int) : Task = task {
        let held =
            claimed
            |> Array.map (fun (tp, epoch) ->
                if epoch = 0L then
                    $"{tp}: not claimed by this writer"
                else
                    $"{tp}: epoch {epoch}")
            |> String.concat "; "

        let! owners = task {
            try
                use! connection = dataSource.OpenConnectionAsync()

                let! found =
                    PgAppliedOffsets.describeOwners
                        offsets
                        connection
                        (claimed |> Array.map fst |> List.ofArray)

                return String.concat "; " found
            with error ->
                return $"(could not be read: {error.Message})"
        }

        raise (
            FencedWriteException(
                $"A batch of {count} record(s) for {table} ({server}) was fenced and nothing of it was written: \
                  its partition was claimed by another owner after this writer's claim ({held}; now {owners}, \
                  in {offsets.Owners}). The new owner reads the applied offsets and applies these messages \
                  itself; a workflow drops this write if it lost the partition, and restarts if it did not."
            )
        )
    }

    /// The store of applied offsets in <paramref name="offsets"/>, its calls retried like batches; its
    /// Load claims the partitions for this writer first.
    member _.Store(offsets: PgAppliedOffsets) : AppliedOffsetStore =
        let describe =
            PgRetry.failed $"Reading the applied offsets in {offsets.Table} ({server})"

        let retried (run: NpgsqlConnection -> Task) : Task =
            PgRetry.run retry onTransient describe (fun () -> task {
                use! connection = dataSource.OpenConnectionAsync()
                do! run connection
            })

        {
            GroupId = offsets.GroupId
            Load =
                fun committed -> task {
                    let mutable found = Map.empty

                    do!
                        retried (fun connection -> task {
                            // Claim first (waits for the old owner's batches in flight), then read in
                            // later statements, which see what those batches committed.
                            let! claimed =
                                PgAppliedOffsets.claim
                                    offsets
                                    connection
                                    claimedBy
                                    (committed |> List.map fst)

                            for tp, epoch in claimed do
                                claims[tp] <- epoch

                            let! loaded = PgAppliedOffsets.load offsets connection committed
                            found <- loaded
                        })

                    return found
                }
            Prune =
                fun committed ->
                    retried (fun connection -> PgAppliedOffsets.prune offsets connection committed)
        }
