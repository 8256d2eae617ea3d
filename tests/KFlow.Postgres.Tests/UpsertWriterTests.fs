// Tests for src/KFlow.Postgres/UpsertWriter.fs: batches become upserts, later batches overwrite their
// keys, replays change nothing, bad records fault the write, and the password never shows in an error.
module KFlow.Postgres.Tests.UpsertWriterTests

open System
open System.Net
open System.Net.Sockets
open System.Threading.Tasks
open Expecto
open KFlow.Postgres
open KFlow.Postgres.Tests.TestDatabase

let private freePort () =
    use listener = new TcpListener(IPAddress.Loopback, 0)
    listener.Start()
    (listener.LocalEndpoint :?> IPEndPoint).Port

let private secret = "kflow-S3cret-pw"

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

let tests = testSequenced <| testList "UpsertWriter" [ semantics; passwords ]
