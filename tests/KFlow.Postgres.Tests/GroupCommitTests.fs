// Tests for src/KFlow.Postgres/GroupCommit.fs: how waiting writes are joined (in memory), and the
// writer's joined transactions on the throwaway server (order per key, refused and failed batches,
// exactly-once offsets).
module KFlow.Postgres.Tests.GroupCommitTests

open System
open System.Threading
open System.Threading.Tasks
open Expecto
open KFlow
open KFlow.Postgres
open KFlow.Postgres.Tests.TestDatabase

/// A group commit over (name, rows, kind) items, one statement at a time, joining items of one kind
/// up to 3 rows; the first write waits for `gate`. Returns it and the names of each write, in order.
let private recording (gate: Task) (alone: exn -> bool) (fails: string -> bool) =
    let writes = Collections.Concurrent.ConcurrentQueue<string list>()
    let first = ref true

    let write (items: (string * int * char)[]) : Task =
        let names = items |> Array.map (fun (name, _, _) -> name) |> List.ofArray
        writes.Enqueue names

        task {
            if first.Value then
                first.Value <- false
                do! gate

            if names |> List.exists fails then
                raise (ArgumentException $"refused: {names}")
        }

    let group =
        GroupCommit<string * int * char>(
            1,
            3,
            (fun (_, rows, _) -> rows),
            (fun (_, _, a) (_, _, b) -> a = b),
            alone,
            write
        )

    group, writes

/// Submits the first item and waits (at most 10 s) until its write runs, so the next ones wait.
let private submitFirst (group: GroupCommit<string * int * char>) writes item =
    let first = group.Submit item
    let clock = Diagnostics.Stopwatch.StartNew()

    while Seq.isEmpty writes && clock.Elapsed < TimeSpan.FromSeconds 10. do
        Thread.Sleep 5

    first

let private inMemory =
    testList "in memory" [
        test
            "items waiting behind a statement are joined in submission order while of one kind and within the rows" {
            let gate = TaskCompletionSource()
            let group, writes = recording gate.Task (fun _ -> false) (fun _ -> false)
            let first = submitFirst group writes ("a", 1, 'x')

            let waiting = [
                group.Submit(("b", 1, 'x'))
                group.Submit(("c", 2, 'x'))
                group.Submit(("d", 1, 'y'))
                group.Submit(("e", 1, 'x'))
                group.Submit(("f", 5, 'x'))
            ]

            gate.SetResult()
            (Task.WhenAll(first :: waiting)).GetAwaiter().GetResult()

            Expect.equal
                (List.ofSeq writes)
                [ [ "a" ]; [ "b"; "c" ]; [ "d" ]; [ "e" ]; [ "f" ] ]
                "b+c fill 3 rows; d is of another kind; f alone exceeds the rows"

            Expect.equal (group.Statements, group.Items) (5L, 6L) "5 statements wrote 6 items"
        }

        test
            "a joined write that fails with an error written alone is retried item by item, and only the item at fault fails" {
            let gate = TaskCompletionSource()

            let group, writes =
                recording gate.Task (fun error -> error :? ArgumentException) (fun name -> name = "c")

            let first = submitFirst group writes ("a", 1, 'x')
            let b = group.Submit(("b", 1, 'x'))
            let c = group.Submit(("c", 1, 'x'))
            let d = group.Submit(("d", 1, 'x'))
            gate.SetResult()
            first.GetAwaiter().GetResult()
            b.GetAwaiter().GetResult()
            d.GetAwaiter().GetResult()
            let error = faultOf "c" (fun () -> c)
            Expect.isTrue (error :? ArgumentException) "c fails with its own error"

            Expect.equal
                (List.ofSeq writes)
                [ [ "a" ]; [ "b"; "c"; "d" ]; [ "b" ]; [ "c" ]; [ "d" ] ]
                "b, c, d joined, then alone"
        }

        test "a joined write that fails with another error fails every item of it" {
            let gate = TaskCompletionSource()
            let group, writes = recording gate.Task (fun _ -> false) (fun name -> name = "c")
            let first = submitFirst group writes ("a", 1, 'x')
            let b = group.Submit(("b", 1, 'x'))
            let c = group.Submit(("c", 1, 'x'))
            gate.SetResult()
            first.GetAwaiter().GetResult()

            Expect.isTrue
                (faultOf "b" (fun () -> b) :? ArgumentException)
                "b fails with the statement's error"

            Expect.isTrue (faultOf "c" (fun () -> c) :? ArgumentException) "c too"
        }
    ]

let private row (k: int) (v: string) (n: int64) = [| box k; box v; box n |]

/// A fresh table (k int PRIMARY KEY, v text, n bigint CHECK n ≥ 0) whose every statement sleeps 0.3 s
/// (so the batches after the first wait and are joined), with an audit table of the rows written, in
/// write order (k, n).
let private slowTable () =
    let table = freshTable ()

    execute
        $"CREATE TABLE {table} (k int PRIMARY KEY, v text, n bigint CHECK (n >= 0)); \
          CREATE TABLE {table}_audit (id bigserial PRIMARY KEY, k int, n bigint); \
          CREATE FUNCTION {table}_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
          INSERT INTO {table}_audit (k, n) VALUES (NEW.k, NEW.n); RETURN NULL; END $$; \
          CREATE TRIGGER audit AFTER INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_audit(); \
          CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); \
          RETURN NULL; END $$; CREATE TRIGGER slow BEFORE INSERT ON {table} FOR EACH STATEMENT \
          EXECUTE FUNCTION {table}_slow()"

    table

let private contents (table: string) =
    query $"SELECT k, v, n FROM {table} ORDER BY k"
    |> List.map (fun r -> unbox<int> r[0], string r[1], unbox<int64> r[2])

/// The n values written per key, in write order.
let private writeOrder (table: string) =
    query $"SELECT k, n FROM {table}_audit ORDER BY id"
    |> List.map (fun r -> unbox<int> r[0], unbox<int64> r[1])
    |> List.groupBy fst
    |> List.map (fun (k, ns) -> k, List.map snd ns)
    |> Map.ofList

/// A writer of (k, v, n) rows: 8 batches in flight, one statement at a time.
let private joiningWriter (table: string) =
    writerFor (
        configFor table [ "k"; "v"; "n" ] [ "k" ]
        |> UpsertConfig.withPipelining 8
        |> UpsertConfig.withGroupCommit 1 UpsertConfig.DefaultStatementRows
    )

/// Writes the batches as the runtime's lane does (each reserved in request order, released when its
/// write ended); returns the writes' tasks.
let private writeAsLane (writer: UpsertWriter<obj[]>) (batches: obj[] list list) =
    let pipelining = writer.Pipelining

    [
        for batch in batches do
            let value = box batch

            let t =
                pipelining.Reserve(value).ContinueWith(fun (_: Task) -> writer.Write batch).Unwrap()

            t.ContinueWith(fun (_: Task) -> pipelining.Release value) |> ignore
            t
    ]

let private joined (writer: UpsertWriter<'a>) =
    let struct (statements, batches) = writer.GroupCommits
    statements < batches

let private onServer =
    testList "on the server" [
        test
            "batches ready while a statement runs are joined into one transaction, each key keeping its order and last value" {
            let table = slowTable ()
            use writer = joiningWriter table

            let batches = [
                [ row 1 "a" 1L; row 2 "a" 2L ]
                [ row 3 "b" 3L ]
                [ row 1 "c" 4L; row 4 "c" 5L ]
                [ row 5 "d" 6L; row 3 "d" 7L ]
                [ row 6 "e" 8L ]
            ]

            (Task.WhenAll(writeAsLane writer batches)).GetAwaiter().GetResult()
            Expect.isTrue (joined writer) "some batches shared a transaction"

            Expect.equal
                (contents table)
                [ 1, "c", 4L; 2, "a", 2L; 3, "d", 7L; 4, "c", 5L; 5, "d", 6L; 6, "e", 8L ]
                "the last value per key, as written one by one"

            Expect.equal (writeOrder table |> Map.find 1) [ 1L; 4L ] "key 1: a, then c"
            Expect.equal (writeOrder table |> Map.find 3) [ 3L; 7L ] "key 3: b, then d"
            Expect.equal writer.HeldKeys 0 "every key is released"
        }

        test
            "a joined statement of 2,000 rows or more is copied into the table while its keys are new, and upserts once they are not" {
            let table = slowTable ()
            use writer = joiningWriter table
            let batch (first: int) (v: string) = [ for k in first .. first + 999 -> row k v (int64 k) ]
            // 3,000 new keys joined behind the first batch: the COPY path.
            let fresh = [ batch 0 "a"; batch 1000 "b"; batch 2000 "c"; batch 3000 "d" ]
            (Task.WhenAll(writeAsLane writer fresh)).GetAwaiter().GetResult()
            Expect.isTrue (joined writer) "batches shared a transaction"
            Expect.isGreaterThanOrEqual writer.Copies 1L "a joined statement was copied"
            // Then keys already there (and new ones): the COPY meets a unique violation, the upsert runs.
            let again = [ batch 4000 "e"; batch 500 "f"; batch 1500 "g"; batch 3500 "h" ]
            (Task.WhenAll(writeAsLane writer again)).GetAwaiter().GetResult()

            // Written one by one, each batch overwrites its keys.
            let expected =
                fresh @ again
                |> List.concat
                |> List.fold
                    (fun (m: Map<int, string>) r -> Map.add (unbox<int> r[0]) (string r[1]) m)
                    Map.empty
                |> Map.toList
                |> List.map (fun (k, v) -> k, v, int64 k)

            Expect.equal (contents table) expected "every key holds its last value"
            Expect.equal writer.HeldKeys 0 "every key is released"
        }

        test "a batch the database refuses in a joined transaction fails alone; the others are committed" {
            let table = slowTable ()
            use writer = joiningWriter table
            let a = writer.Write [ row 1 "a" 1L ]
            let b = writer.Write [ row 2 "b" 2L ]
            let c = writer.Write [ row 3 "c" -1L ]
            let d = writer.Write [ row 4 "d" 4L ]
            a.GetAwaiter().GetResult()
            b.GetAwaiter().GetResult()
            d.GetAwaiter().GetResult()
            let error = faultOf "c's write" (fun () -> c)
            Expect.isTrue (error :? PgSinkException) "c faults with PgSinkException"
            Expect.stringContains error.Message "Upsert of 1 record(s)" "c's error is its own"
            Expect.equal (contents table) [ 1, "a", 1L; 2, "b", 2L; 4, "d", 4L ] "a, b and d are committed"
            Expect.equal writer.HeldKeys 0 "every key is released"
        }

        test "a transient failure of a joined transaction is retried, and no batch of it is lost" {
            let table = slowTable ()

            execute
                $"CREATE SEQUENCE {table}_fault; \
                  CREATE FUNCTION {table}_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                  IF NEW.v = 'fail' AND nextval('{table}_fault') = 1 THEN \
                  RAISE EXCEPTION 'injected fault' USING ERRCODE = '40001'; END IF; RETURN NEW; END $$; \
                  CREATE TRIGGER fault BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_fault()"

            use writer = joiningWriter table

            let tasks = [
                writer.Write [ row 1 "a" 1L ]
                writer.Write [ row 2 "b" 2L ]
                writer.Write [ row 3 "fail" 3L ]
                writer.Write [ row 4 "d" 4L ]
            ]

            (Task.WhenAll tasks).GetAwaiter().GetResult()
            Expect.isGreaterThanOrEqual writer.Retries 1L "the joined transaction failed once and was retried"
            Expect.isTrue (joined writer) "b, c and d shared a transaction"

            Expect.equal
                (contents table)
                [ 1, "a", 1L; 2, "b", 2L; 3, "fail", 3L; 4, "d", 4L ]
                "every batch is committed"
        }

        test
            "exactly-once mode: joined batches record their offsets, and a replay joined with a new batch applies each message once" {
            let table = freshTable ()

            execute
                $"CREATE TABLE {table} (src_offset bigint, body text); \
                  CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); \
                  RETURN NULL; END $$; CREATE TRIGGER slow BEFORE INSERT ON {table} FOR EACH STATEMENT \
                  EXECUTE FUNCTION {table}_slow()"

            use writer =
                writerFor (
                    configFor table [ "src_offset"; "body" ] []
                    |> UpsertConfig.withExactlyOnce ("group-commit-" + Guid.NewGuid().ToString("N"))
                    |> UpsertConfig.withGroupCommit 1 UpsertConfig.DefaultStatementRows
                )

            writer.JoinExactlyOnce <- true
            let tp = TopicPartition.create "t" 0

            let write (offsets: int64 list) =
                writer.WriteApplied(
                    offsets |> List.map (Position.create tp),
                    offsets |> List.map (fun o -> [| box o; box $"m{o}" |])
                )

            // The batches after the first one wait for it and are joined.
            (Task.WhenAll [ write [ 0L ]; write [ 1L ]; write [ 2L; 3L ]; write [ 4L ] ])
                .GetAwaiter()
                .GetResult()

            Expect.isTrue (joined writer) "batches shared a transaction"
            // Replays of 1 and 2-3 joined with the new 5 and 6: the joined statement writes nothing,
            // then each batch alone applies what is new.
            (Task.WhenAll [ write [ 5L ]; write [ 1L ]; write [ 2L; 3L ]; write [ 6L ] ])
                .GetAwaiter()
                .GetResult()

            let offsets =
                query $"SELECT src_offset FROM {table} ORDER BY src_offset"
                |> List.map (fun r -> unbox<int64> r[0])

            Expect.equal offsets [ 0L .. 6L ] "each message applied once"
        }
    ]

let tests = testList "GroupCommit" [ inMemory; testSequenced onServer ]
