// Benchmark of the PostgreSQL upsert sink (issue 6): rows per second for 1,000,000 rows of 5 columns in
// batches of 1,000, next to a raw binary COPY of the same rows (the ceiling) and a naive per-row upsert.
module KFlow.Bench.PgSinkBench

open System
open System.Diagnostics
open System.IO
open System.Threading
open System.Threading.Tasks
open Npgsql
open NpgsqlTypes
open KFlow.Postgres
open KFlow.Testing

/// Rows in the sink and raw COPY runs.
let private rowCount = 1_000_000

/// Records per sink batch.
let private batchSize = 1_000

/// Rows in the naive run (per-row statements are slow; the rate is extrapolated from these).
let private naiveRowCount = 20_000

/// Runs of the sink and of the raw COPY, alternated; the best of each is reported (the machine is
/// shared, so a single run mostly measures the neighbours).
let private rounds = 3

/// Concurrent streams of batches in the concurrent sink run (as the runtime writes partitions).
let private concurrentStreams = 4

/// PostgreSQL's defaults for durability, stated explicitly over the throwaway server's test settings.
let private durable = [ "fsync", "on"; "synchronous_commit", "on"; "full_page_writes", "on" ]

let private epoch = DateTime(2024, 1, 1, 0, 0, 0, DateTimeKind.Utc)

/// A value as a field of a record (never null here).
let private field (value: 'T) : obj = Unchecked.nonNull (box value)

/// Row i: id bigint, name text, qty integer, price double precision, at timestamptz.
let private record (i: int) : obj[] = [|
    field (int64 i)
    field $"customer-{i % 10_000}"
    field (i % 1_000)
    field (float i * 0.01)
    field (epoch.AddSeconds(float i))
|]

let private fields = [ "id"; "name"; "qty"; "price"; "at" ]

let private execute (connectionString: string) (sql: string) =
    use connection = new NpgsqlConnection(connectionString)
    connection.Open()
    use command = new NpgsqlCommand(sql, connection)
    command.ExecuteNonQuery() |> ignore

let private count (connectionString: string) (table: string) =
    use connection = new NpgsqlConnection(connectionString)
    connection.Open()
    use command = new NpgsqlCommand($"SELECT count(*) FROM {table}", connection)
    command.ExecuteScalar() :?> int64

/// A fresh empty table of the benchmark's shape, keyed by id.
let private freshTable (connectionString: string) (name: string) =
    execute
        connectionString
        $"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id bigint PRIMARY KEY, name text NOT NULL, \
          qty integer NOT NULL, price double precision NOT NULL, at timestamptz NOT NULL)"

/// The CPU seconds (user + system) the server's processes used so far: the postmaster's own and its
/// reaped children's, plus its live children's (backends, WAL writer, checkpointer…), from /proc;
/// NaN for an external server or without /proc.
let private serverCpuSeconds (dataDirectory: string | null) () : float =
    let tick = 100.0 // USER_HZ on Linux

    /// ppid and (utime, stime, cutime, cstime) of a process, from /proc/<pid>/stat.
    let stat (pid: string) =
        try
            let text = File.ReadAllText $"/proc/{pid}/stat"
            // "pid (name) state ppid …": the name may hold spaces, so split after the last ')'.
            let fields = text.Substring(text.LastIndexOf ')' + 2).Split ' '
            let ticks (i: int) = float (fields[i])
            Some(fields[1], (ticks 11, ticks 12, ticks 13, ticks 14))
        with _ ->
            None

    let pidFile =
        match dataDirectory with
        | null -> ""
        | directory -> Path.Combine(directory, "postmaster.pid")

    if not (File.Exists pidFile) || not (Directory.Exists "/proc") then
        nan
    else
        let postmaster = (Array.head (File.ReadAllLines pidFile)).Trim()

        match stat postmaster with
        | None -> nan
        | Some(_, (user, system, childUser, childSystem)) ->
            let children =
                Directory.GetDirectories "/proc"
                |> Array.map (fun directory -> directory.Substring "/proc/".Length)
                |> Array.filter (fun name -> name.Length > 0 && Char.IsDigit name[0])
                |> Array.choose stat
                |> Array.sumBy (fun (parent, (u, s, _, _)) -> if parent = postmaster then u + s else 0.0)

            (user + system + childUser + childSystem + children) / tick

/// The server a run writes to: its connection string and its processes' CPU seconds so far.
[<NoEquality; NoComparison>]
type private Server = {
    ConnectionString: string
    CpuSeconds: unit -> float
}

/// One writer's run: rows per second, and client and server CPU µs per row.
type private Measured = {
    Rate: float
    ClientCpu: float
    ServerCpu: float
}

/// Times `work`, which must leave `expected` rows in `table` (fails naming `what` otherwise), and
/// returns its rate in `rows` per second and the client's and server's CPU per row.
let private timedRate (server: Server) table (expected: int64) what (rows: int) (work: unit -> unit) =
    let cpu = Process.GetCurrentProcess().TotalProcessorTime
    let serverCpu = server.CpuSeconds()
    let watch = Stopwatch.StartNew()
    work ()
    let elapsed = watch.Elapsed
    let used = Process.GetCurrentProcess().TotalProcessorTime - cpu
    let serverUsed = server.CpuSeconds() - serverCpu

    if count server.ConnectionString table <> expected then
        failwith $"the {what} benchmark lost rows"

    let rate = float rows / elapsed.TotalSeconds
    let clientPerRow = used.TotalMilliseconds * 1000.0 / float rows
    let serverPerRow = serverUsed * 1e6 / float rows

    // The client's and the server's shares of the machine (the server's processes share its cores).
    printfn
        "    %-22s %9.0f rows/s, CPU per row: client %.2f µs (%.2f cores), server %.2f µs (%.2f cores)"
        what
        rate
        clientPerRow
        (used.TotalSeconds / elapsed.TotalSeconds)
        serverPerRow
        (serverUsed / elapsed.TotalSeconds)

    {
        Rate = rate
        ClientCpu = clientPerRow
        ServerCpu = serverPerRow
    }

/// Writes the batches of one stream as the runtime's lane does for a sink with `pipelining`: up to
/// InFlight writes outstanding (each reserved first, in order, and released when it ended), the next
/// started when one ends; with InFlight 1, each after the one before it ended.
let private writeLane
    (pipelining: KFlow.SinkPipelining)
    (write: obj[] list -> Task)
    (batches: obj[] list list)
    =
    use room = new SemaphoreSlim(pipelining.InFlight)
    let running = ResizeArray<Task>()

    for batch in batches do
        room.Wait()
        let value: obj = Unchecked.nonNull (box batch)

        let ready =
            if pipelining.InFlight > 1 then
                pipelining.Reserve value
            else
                Task.CompletedTask

        let t = ready.ContinueWith(fun (_: Task) -> write batch).Unwrap()

        t.ContinueWith(fun (_: Task) ->
            if pipelining.InFlight > 1 then
                pipelining.Release value

            room.Release() |> ignore)
        |> ignore

        running.Add t

    (Task.WhenAll running).GetAwaiter().GetResult()

/// The sink: rowCount records in batches of batchSize from `streams` concurrent streams, each written as
/// a runtime lane writes them with UpsertConfig.Pipelining = `inFlight` (1: one batch after the other);
/// in exactly-once mode each batch also records its source offsets (offset = the row's id, one partition).
let private sink (exactlyOnce: bool) (streams: int) (inFlight: int) (joined: bool) (server: Server) =
    let connectionString = server.ConnectionString
    freshTable connectionString "bench_sink"
    execute connectionString "DROP TABLE IF EXISTS bench_applied_offsets"

    let batches =
        List.init (rowCount / batchSize) (fun b -> List.init batchSize (fun i -> record (b * batchSize + i)))

    // Stream s writes batches s, s + streams, s + 2 × streams, … one after the other.
    let parts =
        batches
        |> List.indexed
        |> List.groupBy (fun (i, _) -> i % streams)
        |> List.map (snd >> List.map snd)

    let config = {
        UpsertConfig.create (PgConnection.ConnectionString connectionString) "bench_sink" fields [ "id" ] id with
            ExactlyOnce =
                if exactlyOnce then
                    Some {
                        GroupId = "bench"
                        OffsetsTable = "bench_applied_offsets"
                    }
                else
                    None
            Pipelining = inFlight
    }

    // Unjoined: the writer before group commit (each batch in its own transaction, as many at once
    // as are ready, 4 in flight), measured in the same run for comparison.
    let config =
        if joined then
            config
        else
            { config with Pipelining = 4 } |> UpsertConfig.withGroupCommit 100 1

    use writer = (UpsertWriter.create config).GetAwaiter().GetResult()
    // Row i stands for offset i of partition 0; the warm-up row (-1) for offset 0 of partition 1.
    let positionOf (row: obj[]) =
        match unbox<int64> row[0] with
        | id when id >= 0L -> KFlow.Position.create (KFlow.TopicPartition.create "bench" 0) id
        | _ -> KFlow.Position.create (KFlow.TopicPartition.create "bench" 1) 0L

    let write (batch: obj[] list) =
        if exactlyOnce then
            writer.WriteApplied(batch |> List.map positionOf, batch)
        else
            UpsertWriter.write writer batch

    // Warm-up: one batch of another key (connection, type resolution), then the timed run.
    (write [ record -1 ]).GetAwaiter().GetResult()

    let what =
        (if exactlyOnce then "exactly-once " else "")
        + $"sink {streams}x{inFlight}"
        + (if joined then "" else " unjoined")

    let measured =
        timedRate server "bench_sink" (int64 rowCount + 1L) what rowCount (fun () ->
            let writes =
                parts
                |> List.map (fun part -> Task.Run(fun () -> writeLane writer.Pipelining write part))
                |> Array.ofList

            Task.WaitAll writes)

    let struct (statements, batches) = writer.GroupCommits
    printfn "    %-22s %9.1f batches per transaction" "" (float batches / float statements)
    measured

/// Copies rows (id, name, qty, price, at) into a table with one binary COPY, in one transaction.
let private copyInTransaction (connection: NpgsqlConnection) (table: string) (rows: obj[] seq) =
    use transaction = connection.BeginTransaction()

    do
        use importer =
            connection.BeginBinaryImport(
                $"COPY {table} (id, name, qty, price, at) FROM STDIN (FORMAT BINARY)"
            )

        for row in rows do
            importer.StartRow()
            importer.Write(unbox<int64> row[0], NpgsqlDbType.Bigint)
            importer.Write(unbox<string> row[1], NpgsqlDbType.Text)
            importer.Write(unbox<int> row[2], NpgsqlDbType.Integer)
            importer.Write(unbox<float> row[3], NpgsqlDbType.Double)
            importer.Write(unbox<DateTime> row[4], NpgsqlDbType.TimestampTz)

        importer.Complete() |> ignore

    transaction.Commit()

/// Raw binary COPY of the same rows into an empty table, in one stream and one transaction.
let private rawCopy (server: Server) =
    let connectionString = server.ConnectionString
    freshTable connectionString "bench_copy"
    let rows = Array.init rowCount record
    use connection = new NpgsqlConnection(connectionString)
    connection.Open()

    timedRate server "bench_copy" (int64 rowCount) "raw COPY" rowCount (fun () ->
        copyInTransaction connection "bench_copy" rows)

/// Raw binary COPY of the same rows in batches of batchSize, each in its own transaction (the sink's
/// commit granularity): what a batch of 1,000 can cost at best.
let private rawCopyBatched (server: Server) =
    let connectionString = server.ConnectionString
    freshTable connectionString "bench_copy_batched"
    let rows = Array.init rowCount record
    use dataSource = NpgsqlDataSource.Create connectionString

    timedRate server "bench_copy_batched" (int64 rowCount) "batched raw COPY" rowCount (fun () ->
        for b in 0 .. rowCount / batchSize - 1 do
            use connection = dataSource.OpenConnection()
            copyInTransaction connection "bench_copy_batched" (ArraySegment(rows, b * batchSize, batchSize)))

/// A naive upsert: one prepared INSERT ... ON CONFLICT per row, a transaction per batch of batchSize.
let private naive (server: Server) =
    let connectionString = server.ConnectionString
    freshTable connectionString "bench_naive"
    use connection = new NpgsqlConnection(connectionString)
    connection.Open()

    use command =
        new NpgsqlCommand(
            "INSERT INTO bench_naive (id, name, qty, price, at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, qty = EXCLUDED.qty, price = EXCLUDED.price, \
             at = EXCLUDED.at",
            connection
        )

    let parameters = [|
        NpgsqlParameter<int64>(NpgsqlDbType = NpgsqlDbType.Bigint) :> NpgsqlParameter
        NpgsqlParameter<string>(NpgsqlDbType = NpgsqlDbType.Text)
        NpgsqlParameter<int>(NpgsqlDbType = NpgsqlDbType.Integer)
        NpgsqlParameter<float>(NpgsqlDbType = NpgsqlDbType.Double)
        NpgsqlParameter<DateTime>(NpgsqlDbType = NpgsqlDbType.TimestampTz)
    |]

    command.Parameters.AddRange parameters
    command.Prepare()

    timedRate server "bench_naive" (int64 naiveRowCount) "naive" naiveRowCount (fun () ->
        for b in 0 .. naiveRowCount / batchSize - 1 do
            use transaction = connection.BeginTransaction()
            command.Transaction <- transaction

            for i in b * batchSize .. (b + 1) * batchSize - 1 do
                let row = record i

                for p in 0 .. row.Length - 1 do
                    parameters[p].Value <- row[p]

                command.ExecuteNonQuery() |> ignore

            transaction.Commit())

/// The writer's client work before the server (no statement): each batch reserved in the pipeline
/// (rows mapped and normalized, keys hashed and placed) and released, for rowCount rows in batches of
/// batchSize; prints and returns CPU µs and allocated bytes per row (best of `rounds`).
let private preparation (server: Server) =
    freshTable server.ConnectionString "bench_prepare"

    let batches =
        List.init (rowCount / batchSize) (fun b -> List.init batchSize (fun i -> record (b * batchSize + i)))
        |> List.map (fun batch -> Unchecked.nonNull (box batch))

    let config =
        UpsertConfig.create
            (PgConnection.ConnectionString server.ConnectionString)
            "bench_prepare"
            fields
            [ "id" ]
            id

    use writer = (UpsertWriter.create config).GetAwaiter().GetResult()
    let pipelining = writer.Pipelining

    let once () =
        let cpu = Process.GetCurrentProcess().TotalProcessorTime
        let bytes = GC.GetAllocatedBytesForCurrentThread()

        for batch in batches do
            pipelining.Reserve batch |> ignore
            pipelining.Release batch

        let used = Process.GetCurrentProcess().TotalProcessorTime - cpu
        let allocated = GC.GetAllocatedBytesForCurrentThread() - bytes
        used.TotalMilliseconds * 1000.0 / float rowCount, float allocated / float rowCount

    let cpu, bytes = List.init rounds (fun _ -> once ()) |> List.min
    execute server.ConnectionString "DROP TABLE bench_prepare"
    printfn "    %-22s CPU %.2f µs per row, %.0f bytes allocated per row" "preparation" cpu bytes
    cpu, bytes

/// <summary>Runs the measurements on a throwaway PostgreSQL (or KFLOW_TEST_PG) and returns
/// pg_sink_rows_per_s (one stream of batches written as the runtime's lane writes them with the sink's
/// defaults: 16 in flight, group commit), pg_raw_copy_rows_per_s, pg_naive_rows_per_s and
/// ratio_pg_sink_vs_copy, then pg_sink_sequential_rows_per_s and ratio_pg_sink_sequential_vs_copy (one
/// batch after the other), pg_raw_copy_batched_rows_per_s and ratio_pg_sink_vs_batched_copy (COPY with
/// the sink's batches and commits, one after the other), pg_sink_concurrent_rows_per_s (4 concurrent
/// sequential streams, as the runtime writes partitions) and ratio_pg_sink_concurrent_vs_copy, and the
/// exactly-once figures (one stream, pipelined), pg_sink_unjoined_rows_per_s (the writer before group
/// commit: 4 in flight, a transaction per batch), the client and server CPU µs per row of the main
/// writers (pg_sink_server_cpu_us_per_row …: the server's processes from /proc) and the preparation
/// micro-benchmark (pg_sink_prepare_cpu_us_per_row, pg_sink_prepare_bytes_per_row).</summary>
/// <remarks>The sink and the raw COPYs each run 3 times, alternated, and the best run of each counts (CPU
/// figures: medians). The naive rate is measured on 20,000 rows (a rate, so it extrapolates to
/// 1,000,000). About a minute and a half.</remarks>
let run () : (string * float) list =
    // The server's ordinary durable settings, not the tests' (which turn fsync, synchronous_commit and
    // full_page_writes off): a sink that commits every batch pays for its commits, as in production.
    use postgres =
        Postgres.startWith {
            PostgresOptions.defaults with
                Settings = durable
        }

    let server = {
        ConnectionString = postgres.ConnectionString
        CpuSeconds = serverCpuSeconds postgres.DataDirectory
    }

    let measured =
        List.init rounds (fun _ -> [|
            rawCopy server
            rawCopyBatched server
            sink false 1 1 true server
            sink false concurrentStreams 1 true server
            sink true 1 UpsertConfig.DefaultPipelining true server
            sink false 1 UpsertConfig.DefaultPipelining true server
            sink false 1 4 false server
        |])

    let of' (figure: Measured -> float) (i: int) =
        measured |> List.map (fun run -> figure run[i])

    let rates = of' _.Rate
    let best (i: int) = List.max (rates i)

    let medianOf (values: float list) =
        let sorted = List.sort values
        sorted[sorted.Length / 2]

    let median (i: int) = medianOf (rates i)

    let naiveRate = (naive server).Rate
    let prepareCpu, prepareBytes = preparation server

    for table in
        [
            "bench_sink"
            "bench_copy"
            "bench_copy_batched"
            "bench_naive"
            "bench_applied_offsets"
        ] do
        execute server.ConnectionString $"DROP TABLE IF EXISTS {table}"

    let names = [|
        "raw COPY, one stream"
        "raw COPY, batches of 1,000"
        "sink, one batch at a time"
        $"sink, {concurrentStreams} concurrent streams"
        $"sink, exactly-once, {UpsertConfig.DefaultPipelining} in flight"
        $"sink, {UpsertConfig.DefaultPipelining} in flight (default)"
        "sink, 4 in flight, unjoined"
    |]

    printfn "PostgreSQL sink: %d rows of 5 columns, best and median of %d runs" rowCount rounds
    printfn "(CPU: medians of the runs, µs per row; the server's processes: backends, WAL writer…)"

    printfn
        "| %-30s | %14s | %14s | %10s | %10s |"
        "writer"
        "median rows/s"
        "best rows/s"
        "client CPU"
        "server CPU"

    printfn
        "|%s|%s|%s|%s|%s|"
        (String('-', 32))
        (String('-', 16))
        (String('-', 16))
        (String('-', 12))
        (String('-', 12))

    let clientCpu (i: int) = medianOf (of' _.ClientCpu i)
    let serverCpu (i: int) = medianOf (of' _.ServerCpu i)

    for i in 0 .. names.Length - 1 do
        printfn
            "| %-30s | %14.0f | %14.0f | %10.2f | %10.2f |"
            names[i]
            (median i)
            (best i)
            (clientCpu i)
            (serverCpu i)

    printfn
        "| %-30s | %14s | %14.0f | %10s | %10s |"
        $"naive upsert ({naiveRowCount} rows)"
        ""
        naiveRate
        ""
        ""

    printfn
        "| %-30s | %14.2f | %14.2f | %10s | %10s |"
        "ratio sink / raw COPY"
        (median 5 / median 0)
        (best 5 / best 0)
        ""
        ""

    // The keys hold the best run of each: on a shared machine the least disturbed run is the best
    // estimate of what each writer costs; the medians are recorded next to them. CPU figures are
    // medians (CPU per row depends little on the neighbours); an external server's are left out.
    [
        "pg_sink_rows_per_s", best 5
        "pg_raw_copy_rows_per_s", best 0
        "pg_naive_rows_per_s", naiveRate
        "ratio_pg_sink_vs_copy", best 5 / best 0
        "ratio_pg_sink_vs_copy_median", median 5 / median 0
        "pg_sink_sequential_rows_per_s", best 2
        "ratio_pg_sink_sequential_vs_copy", best 2 / best 0
        "pg_raw_copy_batched_rows_per_s", best 1
        "ratio_pg_sink_vs_batched_copy", best 5 / best 1
        "pg_sink_concurrent_rows_per_s", best 3
        "ratio_pg_sink_concurrent_vs_copy", best 3 / best 0
        "pg_sink_rows_per_s_median", median 5
        "pg_raw_copy_rows_per_s_median", median 0
        "pg_sink_concurrent_rows_per_s_median", median 3
        "pg_sink_exactly_once_rows_per_s", best 4
        "ratio_pg_sink_exactly_once_vs_sink", best 4 / best 5
        "pg_sink_client_cpu_us_per_row", clientCpu 5
        "pg_sink_server_cpu_us_per_row", serverCpu 5
        "pg_raw_copy_client_cpu_us_per_row", clientCpu 0
        "pg_raw_copy_server_cpu_us_per_row", serverCpu 0
        "pg_raw_copy_batched_server_cpu_us_per_row", serverCpu 1
        "pg_sink_sequential_server_cpu_us_per_row", serverCpu 2
        "pg_sink_exactly_once_server_cpu_us_per_row", serverCpu 4
        "pg_sink_prepare_cpu_us_per_row", prepareCpu
        "pg_sink_prepare_bytes_per_row", prepareBytes
        "pg_sink_unjoined_rows_per_s", best 6
        "ratio_pg_sink_unjoined_vs_copy", best 6 / best 0
        "pg_sink_unjoined_client_cpu_us_per_row", clientCpu 6
        "pg_sink_unjoined_server_cpu_us_per_row", serverCpu 6
    ]
    |> List.filter (fun (_, value) -> not (Double.IsNaN value))
