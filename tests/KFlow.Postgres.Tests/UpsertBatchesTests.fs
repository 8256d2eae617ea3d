// Tests for src/KFlow.Postgres/UpsertBatches.fs: statements wait for a connection rather than time out in
// the pool, server restarts lose nothing (transient failures retried), and a faulted write commits nothing.
module KFlow.Postgres.Tests.UpsertBatchesTests

open System
open System.Threading
open System.Threading.Tasks
open Expecto
open KFlow.Postgres
open KFlow.Postgres.Tests.TestDatabase

/// Makes the table's inserts take a while, so a test can act while a batch is in its transaction.
let private slowInserts (table: string) =
    execute
        $"CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.4); \
          RETURN NULL; END $$; CREATE TRIGGER slow BEFORE INSERT ON {table} FOR EACH STATEMENT \
          EXECUTE FUNCTION {table}_slow()"

/// Waits until the sink's INSERT (or COPY, for 2,000 rows or more of new keys) into the table runs on
/// the server (its transaction is open).
let private waitForInsert (table: string) =
    let deadline = DateTime.UtcNow.AddSeconds 30.0
    let insert = $"INSERT INTO \"{table}\"%%"
    let copy = $"COPY \"{table}\"%%"

    let running () =
        scalar<int64>
            $"SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND (query LIKE '{insert}' \
              OR query LIKE '{copy}')" > 0L

    while not (running ()) do
        if DateTime.UtcNow > deadline then
            failtest "the sink's INSERT or COPY never started"

        Thread.Sleep 10

let private connections =
    testList "connections" [
        test "more concurrent batches than the pool holds wait for a connection instead of timing out" {
            let table = keyValueTable ()
            // Each statement takes 0.4 s, so with 2 connections 8 batches need 1.6 s, past the pool's
            // 1 s wait (Timeout): without the writer's own cap on connections, waiters time out and retry.
            execute
                $"CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS \
                  $$ BEGIN PERFORM pg_sleep(0.4); RETURN NULL; END $$; \
                  CREATE TRIGGER {table}_slow AFTER INSERT ON {table} FOR EACH STATEMENT \
                  EXECUTE FUNCTION {table}_slow()"

            let writer =
                writerFor {
                    configFor table [ "k"; "v"; "n" ] [ "k" ] with
                        Connection =
                            PgConnection.ConnectionString(
                                connectionString () + ";Maximum Pool Size=2;Timeout=1"
                            )
                }

            let writes = [|
                for w in 0..7 -> UpsertWriter.write writer [ for k in w * 10 .. w * 10 + 9 -> row k "v" 1L ]
            |]

            Task.WaitAll writes
            Expect.equal (count table) 80L "every batch written"
            Expect.equal writer.Retries 0L "no write waited past the pool's timeout"
        }
    ]

let private faults =
    testList "faults" [
        test "a server restart between batches loses nothing" {
            let table = keyValueTable ()
            let writer = keyValueWriter table
            writeNow writer [ for k in 1..500 -> row k "before" 1L ]
            server().Restart()
            writeNow writer [ for k in 501..1000 -> row k "after" 2L ]

            Expect.isGreaterThanOrEqual
                writer.Retries
                1L
                "the pooled connection was broken, and the batch retried"

            Expect.equal (count table) 1000L "both batches"
        }

        test "a server restart during a batch's transaction is retried and loses nothing, with either method" {
            for withArray in [ false; true ] do
                let table = keyValueTable ()
                execute $"ALTER TABLE {table} ADD COLUMN a int[]"
                slowInserts table

                let fields =
                    if withArray then
                        [ "k"; "v"; "n"; "a" ]
                    else
                        [ "k"; "v"; "n" ]

                let writer = writerFor (configFor table fields [ "k" ])

                let batch = [
                    for k in 1..2000 ->
                        Array.append (row k "during" 1L) (if withArray then [| box [| k |] |] else [||])
                ]

                let write = UpsertWriter.write writer batch
                waitForInsert table
                server().Restart()
                write.GetAwaiter().GetResult()

                Expect.isGreaterThanOrEqual
                    writer.Retries
                    1L
                    $"{writer.Method}: the restart hit the batch, which was retried"

                Expect.equal (count table) 2000L $"{writer.Method}: the whole batch, once"
        }

        test "restarts while batches stream lose nothing" {
            let table = keyValueTable ()
            let writer = keyValueWriter table
            let batches = 40

            let stream =
                Task.Run<unit>(fun () -> task {
                    for b in 0 .. batches - 1 do
                        do!
                            UpsertWriter.write writer [
                                for k in 1..250 -> row (b * 250 + k) $"b{b}" (int64 b)
                            ]
                })

            for _ in 1..3 do
                let before = count table

                let deadline = DateTime.UtcNow.AddSeconds 30.0

                while count table = before && not stream.IsCompleted && DateTime.UtcNow < deadline do
                    Thread.Sleep 5

                server().Restart()

            stream.GetAwaiter().GetResult()
            Expect.isGreaterThanOrEqual writer.Retries 1L "restarts hit the stream"
            Expect.equal (count table) (int64 (batches * 250)) "every record of every batch"
        }

        test "a write whose Task faulted committed nothing" {
            let table = keyValueTable ()
            slowInserts table

            let writer =
                writerFor (
                    configFor table [ "k"; "v"; "n" ] [ "k" ]
                    |> UpsertConfig.withRetry {
                        PgRetry.defaults with
                            MaxAttempts = 2
                            FirstDelay = TimeSpan.FromMilliseconds 50.0
                    }
                )

            let write = UpsertWriter.write writer [ for k in 1..100 -> row k "lost" 1L ]
            waitForInsert table
            server().Stop()
            let e = faultOf "server stopped" (fun () -> write)
            server().Start()
            Expect.isTrue (e :? PgSinkException) "PgSinkException"
            Expect.isTrue (e :?> PgSinkException).IsTransient "transient, out of attempts"
            Expect.equal (count table) 0L "no record committed: the tokens stay open"
        }
    ]

let tests = testSequenced <| testList "UpsertBatches" [ connections; faults ]
