// Tests for src/KFlow.Postgres/UpsertWriter.fs: batches become upserts where the last record per key
// wins, replays change nothing, server restarts lose nothing, a faulted write commits nothing, and the
// password never shows in an error.
module KFlow.Postgres.Tests.UpsertWriterTests

open System
open System.Net
open System.Net.Sockets
open System.Threading
open System.Threading.Tasks
open Expecto
open FsCheck
open KFlow.Postgres
open KFlow.Postgres.Tests.TestDatabase

/// A fresh table (k int PRIMARY KEY, v text, n bigint).
let private keyValueTable () =
    let table = freshTable ()
    execute $"CREATE TABLE {table} (k int PRIMARY KEY, v text, n bigint)"
    table

let private keyValueWriter (table: string) =
    writerFor (configFor table [ "k"; "v"; "n" ] [ "k" ])

let private row (k: int) (v: string) (n: int64) = [| box k; box v; box n |]

/// The table's rows as (k, v, n), ordered by k.
let private contents (table: string) =
    query $"SELECT k, v, n FROM {table} ORDER BY k"
    |> List.map (fun r -> unbox<int> r[0], string r[1], unbox<int64> r[2])

let private count (table: string) =
    scalar<int64> $"SELECT count(*) FROM {table}"

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

let private freePort () =
    use listener = new TcpListener(IPAddress.Loopback, 0)
    listener.Start()
    (listener.LocalEndpoint :?> IPEndPoint).Port

let private secret = "kflow-S3cret-pw"

let private lastWinsProperty =
    let table = lazy (keyValueTable ())

    let config = {
        FsCheckConfig.defaultConfig with
            maxTest = 25
    }

    testPropertyWithConfig
        config
        "batches leave the table holding the last record per key, whatever the duplicates"
    <| fun (batches: (byte * int) list list) ->
        let table = table.Value
        execute $"TRUNCATE {table}"
        let writer = keyValueWriter table

        for batch in batches do
            writeNow writer (batch |> List.map (fun (k, n) -> row (int k % 10) $"v{n}" (int64 n)))

        let expected =
            batches
            |> List.concat
            |> List.fold (fun model (k, n) -> Map.add (int k % 10) ($"v{n}", int64 n) model) Map.empty

        let actual = contents table |> List.map (fun (k, v, n) -> k, (v, n)) |> Map.ofList
        actual = expected

let private semantics =
    testList "semantics" [
        test "a batch of 100,000 records is written completely" {
            let table = freshTable ()

            execute
                $"CREATE TABLE {table} (k int PRIMARY KEY, v text, n bigint, at timestamptz, f double precision)"

            let writer = writerFor (configFor table [ "k"; "v"; "n"; "at"; "f" ] [ "k" ])
            let start = DateTime(2024, 1, 1, 0, 0, 0, DateTimeKind.Utc)

            let batch = [
                for i in 1..100_000 ->
                    [|
                        box i
                        box $"value {i}"
                        box (int64 i * 3L)
                        box (start.AddSeconds(float i))
                        box (float i / 2.0)
                    |]
            ]

            writeNow writer batch
            Expect.equal (count table) 100_000L "every record"

            Expect.equal
                (scalar<decimal> $"SELECT sum(n) FROM {table}")
                (3m * 100_000m * 100_001m / 2m)
                "every value"
        }

        test "records with the same key in one batch: the last one wins" {
            let table = keyValueTable ()
            let writer = keyValueWriter table
            writeNow writer [ row 1 "first" 1L; row 2 "only" 2L; row 1 "second" 3L; row 1 "last" 4L ]
            Expect.equal (contents table) [ 1, "last", 4L; 2, "only", 2L ] "last per key"
        }

        lastWinsProperty

        test "keys the server finds equal but .NET does not (a case-insensitive collation): the last one wins" {
            let table = freshTable ()
            let collation = $"{table}_ci"
            // ICU collation, case-insensitive (nondeterministic): 'a' and 'A' are one key to the server.
            execute
                $"CREATE COLLATION {collation} (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"

            execute $"CREATE TABLE {table} (k text COLLATE {collation} PRIMARY KEY, v int)"
            let writer = writerFor (configFor table [ "k"; "v" ] [ "k" ])
            // Distinct by .NET's Equals, one key under the column's collation: the writer keeps the last
            // record per key as the unique constraint compares them (PostgreSQL refuses to update a row
            // twice in one statement, 21000, without that).
            writeNow writer [ [| box "a"; box 1 |]; [| box "A"; box 2 |] ]
            Expect.equal (query $"SELECT v FROM {table}") [ [| box 2 |] ] "one row, the last record's"
            writeNow writer [ [| box "b"; box 3 |]; [| box "B"; box 4 |]; [| box "a"; box 5 |] ]

            Expect.equal
                (query $"SELECT v FROM {table} ORDER BY v")
                [ [| box 4 |]; [| box 5 |] ]
                "upserted too: the last per key"
        }

        test "with an array field (Copy method) the last record per key wins and a replay changes nothing" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (k int PRIMARY KEY, tags text[])"
            let writer = writerFor (configFor table [ "k"; "tags" ] [ "k" ])
            Expect.equal writer.Method UpsertMethod.Copy "Copy"

            let batch = [
                [| box 1; box [| "a" |] |]
                [| box 2; box [| "b" |] |]
                [| box 1; box [| "c"; "d" |] |]
            ]

            writeNow writer batch
            writeNow writer batch
            let rows = query $"SELECT k, tags FROM {table} ORDER BY k"

            Expect.equal
                rows
                [ [| box 1; box [| "c"; "d" |] |]; [| box 2; box [| "b" |] |] ]
                "last per key, once"
        }

        test "a later batch overwrites the rows of its keys and keeps the others" {
            let table = keyValueTable ()
            let writer = keyValueWriter table
            writeNow writer [ row 1 "a" 1L; row 2 "b" 2L ]
            writeNow writer [ row 2 "B" 20L; row 3 "C" 30L ]
            Expect.equal (contents table) [ 1, "a", 1L; 2, "B", 20L; 3, "C", 30L ] "upserted"
        }

        test "the same batch written twice leaves the same table" {
            let table = keyValueTable ()
            let writer = keyValueWriter table
            writeNow writer [ row 9 "untouched" 9L ]
            let batch = [ for i in 1..1000 -> row (i % 700) $"v{i}" (int64 i) ]
            writeNow writer batch
            let once = contents table
            writeNow writer batch
            Expect.equal (contents table) once "replay changes nothing"
            Expect.equal once.Length 700 "700 distinct keys"
        }

        test "a batch of keys only inserts the missing ones" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (k int PRIMARY KEY)"
            let writer = writerFor (configFor table [ "k" ] [ "k" ])
            writeNow writer [ [| box 1 |]; [| box 2 |]; [| box 1 |] ]
            writeNow writer [ [| box 2 |]; [| box 3 |] ]
            Expect.equal (count table) 3L "keys 1, 2, 3"
        }

        test "a writer on the caller's data source leaves it open when disposed" {
            let table = keyValueTable ()
            use dataSource = Npgsql.NpgsqlDataSource.Create(connectionString ())

            let config =
                UpsertConfig.create (PgConnection.DataSource dataSource) table [ "k"; "v"; "n" ] [ "k" ] id

            do
                use writer = writerFor config
                writeNow writer [ row 1 "a" 1L ]

            use command = dataSource.CreateCommand $"SELECT count(*) FROM {table}"
            Expect.equal (command.ExecuteScalar() :?> int64) 1L "the data source still works"
        }

        test "an empty batch completes at once" {
            let writer = keyValueWriter (keyValueTable ())
            Expect.isTrue (UpsertWriter.write writer []).IsCompletedSuccessfully "completed"
        }

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

        test "concurrent batches on the same keys all commit" {
            let table = keyValueTable ()
            let writer = keyValueWriter table

            let writes = [|
                for w in 1..6 ->
                    UpsertWriter.write writer [
                        for k in (if w % 2 = 0 then [ 1..200 ] else List.rev [ 1..200 ]) ->
                            row k $"w{w}" (int64 w)
                    ]
            |]

            Task.WaitAll writes
            Expect.equal (count table) 200L "every key once"
        }

        test "a record the mapper maps to the wrong number of values faults the write" {
            let table = keyValueTable ()
            let writer = keyValueWriter table
            let e = faultOf "short row" (fun () -> UpsertWriter.write writer [ [| box 1 |] ])
            Expect.isTrue (e :? ArgumentException) "ArgumentException"
            Expect.stringContains e.Message "returned 1 values" "says how many"
        }

        test "a batch the database refuses faults and commits none of its records" {
            let table = freshTable ()
            execute $"CREATE TABLE {table} (k int PRIMARY KEY, v text NOT NULL)"
            let writer = writerFor (configFor table [ "k"; "v" ] [ "k" ])

            let e =
                faultOf "not null" (fun () ->
                    UpsertWriter.write writer [ [| box 1; box "ok" |]; [| box 2; null |] ])

            Expect.isTrue (e :? PgSinkException) "PgSinkException"
            Expect.isFalse (e :?> PgSinkException).IsTransient "not transient"
            Expect.stringContains e.Message table "names the table"
            Expect.equal (count table) 0L "the valid record was not committed either"
        }
    ]

let private passwords =
    testList "password" [
        test "the password is not in a start-up error" {
            let connection =
                PgConnection.ConnectionString(connectionString () + $";Password={secret}")

            let e =
                faultOf "missing table" (fun () ->
                    UpsertWriter.create (UpsertConfig.create connection "no_such" [ "k" ] [ "k" ] id))

            Expect.stringContains e.Message "Host=127.0.0.1" "names the server"
            Expect.isFalse (e.ToString().Contains secret) "no password"
        }

        test "the password is not in a connection error nor in the writer's description" {
            let connection =
                PgConnection.ConnectionString(
                    $"Host=127.0.0.1;Port={freePort ()};Username=postgres;Password={secret};Timeout=2"
                )

            let config =
                UpsertConfig.create connection "t" [ "k" ] [ "k" ] id
                |> UpsertConfig.withRetry {
                    PgRetry.defaults with
                        MaxAttempts = 2
                        FirstDelay = TimeSpan.FromMilliseconds 10.0
                }

            let e = faultOf "closed port" (fun () -> UpsertWriter.create config)
            Expect.isTrue (e :? PgSinkException) "PgSinkException"
            Expect.isTrue (e :?> PgSinkException).IsTransient "a transient failure that outlasted the retries"
            Expect.stringContains e.Message "after 2 attempts" "says how often it tried"
            Expect.isFalse (e.ToString().Contains secret) "no password"

            let table = keyValueTable ()

            let writer =
                writerFor (
                    UpsertConfig.create
                        (PgConnection.ConnectionString(connectionString () + $";Password={secret}"))
                        table
                        [ "k"; "v"; "n" ]
                        [ "k" ]
                        id
                )

            Expect.isFalse (writer.Server.Contains secret) "description"

            let e =
                faultOf "bad value" (fun () ->
                    UpsertWriter.write writer [ [| box 1; box "v"; box "not a number" |] ])

            Expect.isFalse (e.ToString().Contains secret) "no password in a write error"
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

let tests =
    testSequenced <| testList "UpsertWriter" [ semantics; passwords; faults ]
