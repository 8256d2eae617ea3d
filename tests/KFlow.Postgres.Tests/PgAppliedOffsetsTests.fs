// Tests for src/KFlow.Postgres/PgAppliedOffsets.fs and the writer's exactly-once mode: each batch records
// its source offsets in the statement that writes its rows; the store reads them back and prunes them; a
// batch offered again is applied once, even on an insert-only table; a claim fences the batches of the
// partition's previous owner, waiting for those in flight.
module KFlow.Postgres.Tests.PgAppliedOffsetsTests

open System
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Expecto
open Npgsql
open KFlow
open KFlow.Postgres
open KFlow.Postgres.Tests.TestDatabase

let private tp = TopicPartition.create "orders" 0

let private at (offsets: int64 list) =
    offsets |> List.map (Position.create tp)

/// A fresh insert-only table (no key): a replayed batch would show as duplicate rows.
let private eventsTable () =
    let table = freshTable ()
    execute $"CREATE TABLE {table} (src bigint NOT NULL, v text, tags int[])"
    table

/// An exactly-once writer of (src, v) rows into an insert-only table, offsets in `offsetsTable`.
let private appender (table: string) (offsetsTable: string) (group: string) =
    writerFor {
        configFor table [ "src"; "v" ] [] with
            ExactlyOnce =
                Some {
                    GroupId = group
                    OffsetsTable = offsetsTable
                }
    }

/// Writes one (src, v) row per offset, recording the offsets.
let private writeAt (writer: UpsertWriter<obj[]>) (offsets: int64 list) =
    writer.WriteApplied(at offsets, [ for o in offsets -> [| box o; box $"m{o}" |] ]).GetAwaiter().GetResult()

let private load (writer: UpsertWriter<obj[]>) (committed: int64) =
    writer.AppliedOffsets.Load [ tp, committed ] |> _.GetAwaiter().GetResult()

let private sources (table: string) =
    query $"SELECT src FROM {table} ORDER BY src"
    |> List.map (fun r -> unbox<int64> r[0])

/// The offsets recorded in `offsets` (read directly: Load would claim).
let private recorded (offsets: string) =
    query $"SELECT o FROM {offsets}, unnest(offsets) AS o ORDER BY o"
    |> List.map (fun r -> unbox<int64> r[0])

/// Waits until `condition` holds (checked every 20 ms); fails the test after 30 s.
let private waitFor (what: string) (condition: unit -> bool) =
    let clock = Stopwatch.StartNew()

    while not (condition ()) do
        if clock.Elapsed > TimeSpan.FromSeconds 30. then
            failtestf "Timed out after 30 s waiting until %s." what

        Thread.Sleep 20

/// An insert-only (src, v) table whose rows with v = 'hold' wait, inside the batch's statement (after
/// its fence lock), for the advisory lock `key`, held until the returned function is called.
let private heldTable (key: int) =
    let table = eventsTable ()
    let fn = table + "_hold"

    execute
        $"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.v = 'hold' THEN \
          PERFORM pg_advisory_xact_lock_shared({key}); END IF; RETURN NEW; END $$; \
          CREATE TRIGGER {fn} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {fn}()"

    let holder = new NpgsqlConnection(connectionString ())
    holder.Open()

    let run (sql: string) =
        use command = new NpgsqlCommand(sql, holder)
        command.ExecuteNonQuery() |> ignore

    run $"SELECT pg_advisory_lock({key})"

    let release () =
        // Explicitly: a pooled connection's session (and its lock) outlives Dispose.
        run $"SELECT pg_advisory_unlock({key})"
        holder.Dispose()

    table, release

let tests =
    testSequenced
    <| testList "PgAppliedOffsets" [
        test "the offsets table is made at start-up and a batch's offsets are read back with its rows" {
            let table = eventsTable ()
            let offsets = "public." + freshTable ()
            let writer = appender table offsets "g"
            writeAt writer [ 5L; 7L ]
            writeAt writer [ 6L ]
            Expect.equal (sources table) [ 5L; 6L; 7L ] "the rows"
            Expect.equal (load writer 0L) (Map.ofList [ tp, [| 5L; 6L; 7L |] ]) "the offsets, ascending"

            Expect.equal
                (scalar<int64> $"SELECT count(*) FROM {offsets}")
                2L
                "one row per batch and partition"
        }

        test "the default offsets table is kflow_applied_offsets" {
            let writer =
                writerFor (
                    configFor (eventsTable ()) [ "src"; "v" ] []
                    |> UpsertConfig.withExactlyOnce "g0"
                )

            writer.WriteApplied(at [ 1L ], [ [| box 1L; box "a" |] ]).GetAwaiter().GetResult()

            Expect.isGreaterThan
                (scalar<int64> "SELECT count(*) FROM kflow_applied_offsets WHERE group_id = 'g0'")
                0L
                "recorded there"
        }

        test "loading prunes the rows below the committed offset and returns the offsets at or above it" {
            let table = eventsTable ()
            let offsets = freshTable ()
            let writer = appender table offsets "g"
            writeAt writer [ 1L; 2L ]
            writeAt writer [ 4L; 9L ]
            Expect.equal (load writer 5L) (Map.ofList [ tp, [| 9L |] ]) "9 only"
            Expect.equal (scalar<int64> $"SELECT count(*) FROM {offsets}") 1L "the batch of 1 and 2 is pruned"
            writer.AppliedOffsets.Prune [ tp, 10L ] |> _.GetAwaiter().GetResult()
            Expect.equal (load writer 0L) Map.empty "everything below 10 is pruned"
            Expect.equal (sources table) [ 1L; 2L; 4L; 9L ] "the rows stay"
        }

        test "groups do not see each other's offsets" {
            let table = eventsTable ()
            let offsets = freshTable ()
            writeAt (appender table offsets "a") [ 3L ]
            let b = appender table offsets "b"
            Expect.equal (load b 0L) Map.empty "b recorded nothing"
            writeAt b [ 3L ]
            Expect.equal (sources table) [ 3L; 3L ] "b applies its own message 3"
        }

        test "the same batch offered twice is applied once on an insert-only table" {
            let table = eventsTable ()
            let writer = appender table (freshTable ()) "g"
            writeAt writer [ 10L; 11L; 12L ]
            writeAt writer [ 10L; 11L; 12L ]
            Expect.equal (sources table) [ 10L; 11L; 12L ] "each source offset once"
        }

        test "a batch overlapping an applied one writes nothing and faults" {
            let table = eventsTable ()
            let writer = appender table (freshTable ()) "g"
            writeAt writer [ 5L; 7L ]

            let e =
                faultOf "overlap" (fun () ->
                    writer.WriteApplied(at [ 6L; 7L ], [ [| box 6L; box "x" |]; [| box 7L; box "y" |] ]))

            Expect.isTrue (e :? PgSinkException) "PgSinkException"
            Expect.stringContains e.Message "1 of the 2 source offsets" "says how many were applied"
            Expect.equal (sources table) [ 5L; 7L ] "6 was not written either"
            Expect.equal (load writer 0L) (Map.ofList [ tp, [| 5L; 7L |] ]) "6 is not recorded"
        }

        test "a keyed upsert table records offsets on the insert-first and the upsert paths" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (k int PRIMARY KEY, v text)"

            let writer =
                writerFor (configFor table [ "k"; "v" ] [ "k" ] |> UpsertConfig.withExactlyOnce "g")

            let write offsets rows =
                writer.WriteApplied(at offsets, rows).GetAwaiter().GetResult()

            write [ 1L ] [ [| box 1; box "a" |] ]
            write [ 2L ] [ [| box 1; box "b" |]; [| box 2; box "c" |] ]
            write [ 2L ] [ [| box 1; box "stale" |] ]

            Expect.equal
                (query $"SELECT k, v FROM {table} ORDER BY k"
                 |> List.map (fun r -> unbox<int> r[0], string r[1]))
                [ 1, "b"; 2, "c" ]
                "the upsert applied, its replay did not"

            Expect.equal
                (writer.AppliedOffsets.Load [ tp, 0L ] |> _.GetAwaiter().GetResult())
                (Map.ofList [ tp, [| 1L; 2L |] ])
                "both recorded"
        }

        test "the copy method (an array field) records offsets and applies a replay once" {
            let table = eventsTable ()

            let writer =
                writerFor (configFor table [ "src"; "tags" ] [] |> UpsertConfig.withExactlyOnce "copy")

            Expect.equal writer.Method UpsertMethod.Copy "an array field"

            for _ in 1..2 do
                writer.WriteApplied(at [ 8L ], [ [| box 8L; box [| 1; 2 |] |] ]).GetAwaiter().GetResult()

            Expect.equal (sources table) [ 8L ] "once"
        }

        test "Write without positions is refused in exactly-once mode" {
            let writer = appender (eventsTable ()) (freshTable ()) "g"

            let e =
                faultOf "no positions" (fun () -> UpsertWriter.write writer [ [| box 1L; box "a" |] ])

            Expect.stringContains e.Message "WriteApplied" "names the method to use"
        }

        test "a batch of a stale claim is fenced and leaves nothing; the current claim's batch commits" {
            let table = eventsTable ()
            let offsets = freshTable ()
            let a, b = appender table offsets "g", appender table offsets "g"
            load a 0L |> ignore
            writeAt a [ 1L ]

            Expect.equal
                (load b 0L)
                (Map.ofList [ tp, [| 1L |] ])
                "b claims the partition and reads a's batch"

            let e =
                faultOf "stale claim" (fun () ->
                    a.WriteApplied(at [ 2L; 3L ], [ [| box 2L; box "x" |]; [| box 3L; box "y" |] ]))

            Expect.isTrue (e :? FencedWriteException) $"FencedWriteException, not {e.GetType().Name}"
            Expect.stringContains e.Message "fenced" "says it was fenced"
            Expect.stringContains e.Message "orders[0]: epoch 1" "names the claim it held"
            Expect.stringContains e.Message "epoch 2, claimed by" "and the current owner"
            Expect.equal (sources table) [ 1L ] "no row of the fenced batch"
            Expect.equal (recorded offsets) [ 1L ] "none of its offsets"
            writeAt b [ 2L; 3L ]
            Expect.equal (sources table) [ 1L; 2L; 3L ] "the current owner writes them"
            Expect.equal (recorded offsets) [ 1L; 2L; 3L ] "and records them"

            Expect.equal
                (scalar<int64> $"SELECT epoch FROM {offsets}_owners WHERE group_id = 'g' AND topic = 'orders'")
                2L
                "one owner row, at epoch 2"
        }

        test "the copy method's batch of a stale claim is fenced too" {
            let table = eventsTable ()
            let offsets = freshTable ()

            let copier () =
                writerFor {
                    configFor table [ "src"; "tags" ] [] with
                        ExactlyOnce =
                            Some {
                                GroupId = "g"
                                OffsetsTable = offsets
                            }
                }

            let a, b = copier (), copier ()
            load a 0L |> ignore
            load b 0L |> ignore

            let e =
                faultOf "stale claim" (fun () -> a.WriteApplied(at [ 8L ], [ [| box 8L; box [| 1; 2 |] |] ]))

            Expect.isTrue (e :? FencedWriteException) "fenced"
            Expect.isEmpty (sources table) "nothing written"
            b.WriteApplied(at [ 8L ], [ [| box 8L; box [| 1; 2 |] |] ]).GetAwaiter().GetResult()
            Expect.equal (sources table) [ 8L ] "the owner writes it"
        }

        test "a writer that never claimed a partition may write it only until someone claims it" {
            let table = eventsTable ()
            let offsets = freshTable ()
            let a, b = appender table offsets "g", appender table offsets "g"
            writeAt a [ 1L ]
            load b 0L |> ignore

            let e =
                faultOf "unclaimed" (fun () -> a.WriteApplied(at [ 2L ], [ [| box 2L; box "x" |] ]))

            Expect.isTrue (e :? FencedWriteException) "fenced"
            Expect.stringContains e.Message "not claimed by this writer" "says why"
            Expect.equal (sources table) [ 1L ] "written before the claim only"
        }

        test "sinks writing other tables are fenced apart" {
            let offsets = freshTable ()
            let t1, t2 = eventsTable (), eventsTable ()
            let a1, a2 = appender t1 offsets "g", appender t2 offsets "g"
            load a1 0L |> ignore
            load a2 0L |> ignore
            writeAt a1 [ 1L ]
            writeAt a2 [ 2L ]
            Expect.equal (sources t1 @ sources t2) [ 1L; 2L ] "each claim is its own table's"
        }

        test "a claim waits for the old owner's batch in flight, then reads what it committed" {
            let key = Random.Shared.Next(1_000_000, 2_000_000)
            let table, release = heldTable key
            let offsets = freshTable ()
            let a, b = appender table offsets "g", appender table offsets "g"
            load a 0L |> ignore

            let held =
                a.WriteApplied(at [ 5L; 6L ], [ [| box 5L; box "hold" |]; [| box 6L; box "m6" |] ])

            waitFor "the old owner's batch waits inside its statement" (fun () ->
                scalar<int64> "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted" > 0L)

            let claim = b.AppliedOffsets.Load [ tp, 0L ]

            let waitingClaims =
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                + $"AND query LIKE 'INSERT INTO %%{offsets}_owners%%'"

            waitFor "the claim waits for the batch's lock on the owner row" (fun () ->
                scalar<int64> waitingClaims > 0L)

            Expect.isFalse claim.IsCompleted "the claim is still waiting"
            Expect.isFalse held.IsCompleted "so is the batch"
            release () // the batch goes on and commits
            held.GetAwaiter().GetResult()

            Expect.equal
                (sources table)
                [ 5L; 6L ]
                "the batch committed (its claim was current when it locked)"

            Expect.equal
                (claim.GetAwaiter().GetResult())
                (Map.ofList [ tp, [| 5L; 6L |] ])
                "the new owner read the batch's offsets"

            let e =
                faultOf "after the claim" (fun () -> a.WriteApplied(at [ 7L ], [ [| box 7L; box "m7" |] ]))

            Expect.isTrue (e :? FencedWriteException) "the old owner's next batch is fenced"
        }

        test "a batch that waits for a claim in progress is fenced once the claim commits" {
            let table = eventsTable ()
            let offsets = freshTable ()
            let a = appender table offsets "g"
            load a 0L |> ignore
            // A claim in progress: the owner row bumped in a transaction the test holds open.
            use claimer = new NpgsqlConnection(connectionString ())
            claimer.Open()
            use transaction = claimer.BeginTransaction()

            do
                use command =
                    new NpgsqlCommand(
                        $"UPDATE {offsets}_owners SET epoch = epoch + 1, claimed_by = 'test'",
                        claimer,
                        transaction
                    )

                command.ExecuteNonQuery() |> ignore

            // The batch's statement starts (its snapshot still shows the old epoch) and waits for the lock.
            let batch = a.WriteApplied(at [ 1L ], [ [| box 1L; box "m1" |] ])

            let waitingBatches =
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                + "AND query LIKE 'WITH kflow_batch%'"

            waitFor "the batch waits for the claim's row lock" (fun () -> scalar<int64> waitingBatches > 0L)
            Expect.isFalse batch.IsCompleted "the batch is waiting"
            transaction.Commit()
            let e = faultOf "after the claim committed" (fun () -> batch)
            Expect.isTrue (e :? FencedWriteException) "fenced: the locked row's latest version is re-checked"
            Expect.isEmpty (sources table) "nothing written"
            Expect.isEmpty (recorded offsets) "nothing recorded"
        }

        test "with the fence check off (tests only) a stale claim's batch is written" {
            let table = eventsTable ()
            let offsets = freshTable ()
            let a, b = appender table offsets "g", appender table offsets "g"
            load a 0L |> ignore
            load b 0L |> ignore
            a.CheckFence <- false
            writeAt a [ 1L ]
            Expect.equal (sources table) [ 1L ] "nothing fences it: the control of the tests above"
        }

        test "no keys without exactly-once mode is refused at start-up" {
            let e =
                faultOf "no keys" (fun () ->
                    UpsertWriter.create (configFor (eventsTable ()) [ "src" ] []) :> Task)

            Expect.stringContains e.Message "withExactlyOnce" "says how to append"
        }
    ]
