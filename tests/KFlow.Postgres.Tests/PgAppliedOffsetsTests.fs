// Tests for src/KFlow.Postgres/PgAppliedOffsets.fs and the writer's exactly-once mode: each batch records
// its source offsets in the statement that writes its rows; the store reads them back and prunes them; a
// batch offered again is applied once, even on an insert-only table.
module KFlow.Postgres.Tests.PgAppliedOffsetsTests

open System.Threading.Tasks
open Expecto
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

        test "no keys without exactly-once mode is refused at start-up" {
            let e =
                faultOf "no keys" (fun () ->
                    UpsertWriter.create (configFor (eventsTable ()) [ "src" ] []) :> Task)

            Expect.stringContains e.Message "withExactlyOnce" "says how to append"
        }
    ]
