// Command agency-example is an agency's client of the blangko.v1 contract, in Go (grpc-go).
//
// The flow:
//  1. GetServerInfo (open, no token).
//  2. With the agency token: ListStock across offices (paginated, with days of cover),
//     ListLedgerEntries of one office (paginated), VerifyLedger against the published head hash.
//  3. With a counter token of one office: Reserve for an applicant (a valid NIK made up here),
//     then CancelReservation.
//  4. A deliberately bad Reserve (impossible birth date in the NIK, no reason):
//     INVALID_ARGUMENT, whose details (google.rpc.Status from the trailer
//     grpc-status-details-bin) are decoded with status.FromError into errdetails.BadRequest.
//  5. The agency token on a counter RPC: PERMISSION_DENIED; no token at all: UNAUTHENTICATED.
//
// Configuration (environment, so tokens never appear in a process list):
//
//	BLANGKO_TARGET          host:port of the server (default 127.0.0.1:50051)
//	BLANGKO_AGENCY_TOKEN    bearer token of an `agency` principal (required)
//	BLANGKO_COUNTER_TOKEN   bearer token of a `counter` principal of BLANGKO_OFFICE (required)
//	BLANGKO_OFFICE          the counter's office (default 3275, Kota Bekasi in the --demo data)
//	BLANGKO_SERVICE_POINT   the counter's service point (default mpp)
//	BLANGKO_COUNTER_ID      the counter's id (default loket-go)
//
// Exit status: 0 when every check passed, 1 otherwise. NIKs are printed masked only.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	blangkov1 "blangko/gen/go/blangko/v1"
)

const callTimeout = 10 * time.Second

// --- checks --------------------------------------------------------------------------------------

type checkFailed struct{ what string }

func (c checkFailed) Error() string { return c.what }

var passed int

// check records one assertion; a false one stops the flow (recovered in main).
func check(ok bool, format string, args ...any) {
	what := fmt.Sprintf(format, args...)
	if !ok {
		panic(checkFailed{what})
	}
	passed++
	fmt.Printf("  ok: %s\n", what)
}

// --- NIKs ----------------------------------------------------------------------------------------
// Layout PP RR DD DDMMYY SSSS: province, regency/city, district, birth date (day + 40 for women),
// serial (never 0000). The server checks the province code, the birth date and the serial;
// regency and district are not checked (see domain/src/nik.rs).

func randInt(n int64) int64 {
	v, err := rand.Int(rand.Reader, big.NewInt(n))
	if err != nil {
		panic(err)
	}
	return v.Int64()
}

// makeNik returns a valid NIK registered in officeID's region, with a random birth date, sex and serial.
func makeNik(officeID string) string {
	born := time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, int(randInt(365*55)))
	day := born.Day()
	if randInt(2) == 1 {
		day += 40 // a woman
	}
	serial := 1 + randInt(9999)
	return fmt.Sprintf("%s01%02d%02d%02d%04d", officeID, day, int(born.Month()), born.Year()%100, serial)
}

// maskNik is the project's masked form: region (6 digits) and serial kept, birth date hidden.
func maskNik(nik string) string {
	if len(nik) == 16 && strings.Trim(nik, "0123456789") == "" {
		return nik[:6] + "******" + nik[12:]
	}
	return strings.Repeat("*", 16)
}

func requestID() string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "go-" + hex.EncodeToString(b)
}

// --- errors --------------------------------------------------------------------------------------

// printError prints a failed call's code, message and every rich detail, and returns its status.
func printError(err error) *status.Status {
	st, ok := status.FromError(err)
	if !ok {
		fmt.Printf("  -> not a gRPC status: %v\n", err)
		return st
	}
	fmt.Printf("  -> %s: %s\n", st.Code(), st.Message())
	details := st.Details()
	if len(details) == 0 {
		fmt.Println("     (no rich error details)")
	}
	for _, d := range details {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				fmt.Printf("     BadRequest field violation: field=%q reason=%q\n", v.GetField(), v.GetDescription())
				if lm := v.GetLocalizedMessage(); lm.GetMessage() != "" {
					fmt.Printf("       [%s]: %s\n", lm.GetLocale(), lm.GetMessage())
				}
			}
		case *errdetails.ErrorInfo:
			fmt.Printf("     ErrorInfo: reason=%s domain=%s\n", d.GetReason(), d.GetDomain())
		case *errdetails.ResourceInfo:
			fmt.Printf("     ResourceInfo: %s %q\n", d.GetResourceType(), d.GetResourceName())
		case *errdetails.RetryInfo:
			fmt.Printf("     RetryInfo: retry after %s (with the same request_id)\n", d.GetRetryDelay().AsDuration())
		case *errdetails.LocalizedMessage:
			fmt.Printf("     LocalizedMessage [%s]: %s\n", d.GetLocale(), d.GetMessage())
		case error:
			fmt.Printf("     undecodable detail: %v\n", d)
		default:
			fmt.Printf("     %T\n", d)
		}
	}
	return st
}

// expectError checks that err is a gRPC error with the given code and returns its status.
func expectError(want codes.Code, err error) *status.Status {
	if err == nil {
		panic(checkFailed{fmt.Sprintf("expected %s, the call succeeded", want)})
	}
	st := printError(err)
	check(st.Code() == want, "failed with %s (got %s)", want, st.Code())
	return st
}

// --- the flow ------------------------------------------------------------------------------------

type flow struct {
	stock                           blangkov1.StockServiceClient
	counter                         blangkov1.CounterServiceClient
	agencyToken, counterToken       string
	office, servicePoint, counterID string
	nik                             string
}

// call returns a context with a deadline and, when token is not empty, the bearer token.
func call(token string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return ctx, cancel
}

// A mutating call that got no answer (UNAVAILABLE: a replica restarting or shedding load;
// DEADLINE_EXCEEDED: the answer may have been lost) is sent again, the same request with the same
// request_id: the server answers a repeat with its first answer, so nothing is done twice.
const (
	maxAttempts  = 4
	firstBackoff = 200 * time.Millisecond
	maxBackoff   = 5 * time.Second
)

// sendWithRetries calls send with token's metadata, again after UNAVAILABLE or DEADLINE_EXCEEDED
// (at most maxAttempts tries in all), waiting as the server's RetryInfo says, or backing off.
// The first attempt gets firstTimeout, the others callTimeout.
func sendWithRetries[T any](token, requestID string, firstTimeout time.Duration, send func(context.Context) (T, error)) (T, error) {
	backoff := firstBackoff
	timeout := firstTimeout
	for attempt := 1; ; attempt++ {
		ctx, cancel := call(token)
		ctx, cancelTimeout := context.WithTimeout(ctx, timeout)
		answer, err := send(ctx)
		cancelTimeout()
		cancel()
		code := status.Code(err)
		if err == nil || (code != codes.Unavailable && code != codes.DeadlineExceeded) || attempt == maxAttempts {
			return answer, err
		}
		wait := backoff
		if st, ok := status.FromError(err); ok {
			for _, d := range st.Details() {
				if info, ok := d.(*errdetails.RetryInfo); ok {
					wait = info.GetRetryDelay().AsDuration()
				}
			}
		}
		wait = max(0, min(wait, maxBackoff))
		fmt.Printf("  %s on attempt %d: the same request (%s) again in %s\n", code, attempt, requestID, wait)
		time.Sleep(wait)
		backoff = min(backoff*2, maxBackoff)
		timeout = callTimeout
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func daysOfCover(s *blangkov1.StockLevel) string {
	if !s.GetHasDaysOfCover() {
		return "n/a (no use yet)"
	}
	return fmt.Sprintf("%.1f service days", s.GetDaysOfCover())
}

func (f *flow) agencyReads() {
	fmt.Println("\n== Agency: ListStock across offices (page by page) ==")
	var stocks []*blangkov1.StockLevel
	token, pages := "", 0
	for {
		ctx, cancel := call(f.agencyToken)
		page := must(f.stock.ListStock(ctx, &blangkov1.ListStockRequest{PageSize: 2, PageToken: token}))
		cancel()
		pages++
		stocks = append(stocks, page.GetStocks()...)
		token = page.GetNextPageToken()
		if token == "" || pages > 1000 {
			break
		}
	}
	var ids []string
	var ours *blangkov1.StockLevel
	for _, s := range stocks {
		overdue := ""
		if s.GetSupplyOverdue() {
			overdue = "  SUPPLY OVERDUE"
		}
		fmt.Printf("  %s %-22s on hand %5d  held %3d  available %5d  today %d/%d  mean use %.1f/day  cover %s%s\n",
			s.GetOfficeId(), s.GetOfficeName(), s.GetOnHand(), s.GetHeld(), s.GetAvailable(),
			s.GetTodayUsed(), s.GetTodayQuota(), s.GetMeanDailyUse(), daysOfCover(s), overdue)
		ids = append(ids, s.GetOfficeId())
		if s.GetOfficeId() == f.office {
			ours = s
		}
	}
	check(slices.IsSorted(ids), "ListStock ordered by office_id over %d page(s)", pages)
	check(ours != nil, "office %s is listed", f.office)
	check(ours.GetAvailable() == ours.GetOnHand()-ours.GetHeld(), "available = on_hand - held")
	check(len(ours.GetLedgerHeadHash()) == 64, "the office publishes a 64-hex ledger head hash")

	fmt.Printf("\n== Agency: ListLedgerEntries of %s (oldest first) ==\n", f.office)
	var entries []*blangkov1.LedgerEntry
	token = ""
	for {
		ctx, cancel := call(f.agencyToken)
		page := must(f.stock.ListLedgerEntries(ctx, &blangkov1.ListLedgerEntriesRequest{
			OfficeId: f.office, PageSize: 50, PageToken: token,
		}))
		cancel()
		entries = append(entries, page.GetEntries()...)
		token = page.GetNextPageToken()
		if token == "" || len(page.GetEntries()) == 0 {
			break
		}
	}
	for _, e := range entries[max(0, len(entries)-8):] {
		ref := e.GetReference()
		if ref == "" {
			ref = e.GetServicePointId()
		}
		fmt.Printf("  #%-4d %-14s on_hand %+5d -> %-5d held %+3d -> %-3d by %s %s %s\n",
			e.GetSequence(), strings.TrimPrefix(e.GetKind().String(), "LEDGER_ENTRY_KIND_"),
			e.GetOnHandDelta(), e.GetOnHandAfter(), e.GetHeldDelta(), e.GetHeldAfter(),
			e.GetPrincipal(), ref, e.GetMaskedNik())
	}
	fmt.Printf("  (%d entries)\n", len(entries))
	check(len(entries) > 0, "the ledger has entries")
	gapless, linked := true, true
	for i, e := range entries {
		gapless = gapless && e.GetSequence() == uint64(i+1)
		if i > 0 {
			linked = linked && e.GetPreviousHash() == entries[i-1].GetHash()
		}
	}
	check(gapless, "sequences run from 1 without gaps")
	check(linked, "each entry links to the previous entry's hash")

	fmt.Printf("\n== Agency: VerifyLedger of %s against its published head hash ==\n", f.office)
	ctx, cancel := call(f.agencyToken)
	defer cancel()
	verified := must(f.stock.VerifyLedger(ctx, &blangkov1.VerifyLedgerRequest{
		OfficeId: f.office, PublishedHeadHash: ours.GetLedgerHeadHash(),
	}))
	for _, c := range verified.GetChains() {
		fmt.Printf("  %s: intact=%t entries=%d head=#%d %s… %s\n", c.GetOfficeId(), c.GetIntact(),
			c.GetEntriesChecked(), c.GetHeadSequence(), c.GetHeadHash()[:16], c.GetProblem())
	}
	check(verified.GetIntact(), "the ledger chain is intact")
}

func (f *flow) counterFlow() {
	fmt.Printf("\n== Counter: Reserve at %s/%s for NIK %s ==\n", f.office, f.servicePoint, maskNik(f.nik))
	request := &blangkov1.ReserveRequest{
		RequestId:      requestID(),
		OfficeId:       f.office,
		ServicePointId: f.servicePoint,
		CounterId:      f.counterID,
		Nik:            f.nik,
		Reason:         blangkov1.Reason_REASON_NEW_RECORDING,
		IkdStatus:      blangkov1.IkdStatus_IKD_STATUS_NOT_ACTIVE,
	}
	reserve := func(ctx context.Context) (*blangkov1.ReserveResponse, error) {
		return f.counter.Reserve(ctx, request)
	}
	// The first attempt gets a deadline too short on purpose, as when an answer is lost on the
	// way: the retry, the same request, gets the one reservation.
	fmt.Println("  first attempt with a 1 ms deadline (as if its answer were lost):")
	reserved := must(sendWithRetries(f.counterToken, request.GetRequestId(), time.Millisecond, reserve))
	q := reserved.GetQuota()
	fmt.Printf("  quota %s: %d held + %d committed of %d, %d remaining; office available %d\n",
		q.GetLocalDate(), q.GetHeld(), q.GetCommitted(), q.GetQuota(), q.GetRemaining(), q.GetAvailable())
	if r := reserved.GetIkdReferral(); r != nil {
		fmt.Printf("  referred to IKD: %s: %s\n", r.GetCause(), r.GetMessageEnglish())
	}
	res := reserved.GetReservation()
	check(res != nil, "Reserve answered with a reservation (not an IKD referral)")
	fmt.Printf("  reservation %s %s for %s until %s UTC\n", res.GetReservationId(), res.GetState(),
		res.GetMaskedNik(), res.GetExpiresAt().AsTime().Format("15:04:05"))
	check(res.GetReservationId() != "", "the reservation id came back")
	check(res.GetState() == blangkov1.ReservationState_RESERVATION_STATE_HELD, "the reservation is HELD")
	check(res.GetMaskedNik() == maskNik(f.nik), "the server returns the NIK masked, never in clear")
	// The answer's x-server-time-ms header: the server's clock, against which expires_at counts
	// (a counter PC's own clock may be minutes or hours off).
	var header metadata.MD
	reserveWithHeader := func(ctx context.Context) (*blangkov1.ReserveResponse, error) {
		return f.counter.Reserve(ctx, request, grpc.Header(&header))
	}
	again := must(sendWithRetries(f.counterToken, request.GetRequestId(), callTimeout, reserveWithHeader)).GetReservation()
	fmt.Printf("  the same request once more: %s, replayed=%t\n", again.GetReservationId(), again.GetReplayed())
	check(again.GetReservationId() == res.GetReservationId() && again.GetReplayed(),
		"the same request again gets the same reservation, marked replayed (never a second blank)")
	serverTimes := header.Get("x-server-time-ms")
	check(len(serverTimes) == 1, "the answer carries the server's clock (x-server-time-ms)")
	serverMs := must(strconv.ParseInt(serverTimes[0], 10, 64))
	left := again.GetExpiresAt().GetSeconds() - serverMs/1000
	hold := again.GetExpiresAt().GetSeconds() - again.GetCreatedAt().GetSeconds()
	fmt.Printf("  time left on the hold by the server's clock: %d s of %d s\n", left, hold)
	check(left > 0 && hold-left <= 120,
		"the hold's time left, counted by the server's clock, is what is left of the hold (not this machine's clock)")

	fmt.Printf("\n== Counter: CancelReservation %s ==\n", res.GetReservationId())
	cancelRequest := &blangkov1.CancelReservationRequest{
		RequestId:     requestID(),
		ReservationId: res.GetReservationId(),
		Note:          "example client: applicant left",
	}
	cancelled := must(sendWithRetries(f.counterToken, cancelRequest.GetRequestId(), callTimeout,
		func(ctx context.Context) (*blangkov1.CancelReservationResponse, error) {
			return f.counter.CancelReservation(ctx, cancelRequest)
		}))
	c := cancelled.GetReservation()
	fmt.Printf("  reservation %s %s\n", c.GetReservationId(), c.GetState())
	check(c.GetReservationId() == res.GetReservationId(), "the cancel names the same reservation")
	check(c.GetState() == blangkov1.ReservationState_RESERVATION_STATE_CANCELLED, "the reservation is CANCELLED")
}

func (f *flow) errorFlow() {
	// Day 32 is no real birth date (and 72 none for a woman): the NIK is rejected.
	badNik := f.nik[:6] + "32" + f.nik[8:]
	fmt.Printf("\n== Counter: a bad Reserve (NIK %s with day 32, no reason) ==\n", maskNik(badNik))
	ctx, cancel := call(f.counterToken)
	_, err := f.counter.Reserve(ctx, &blangkov1.ReserveRequest{
		RequestId:      requestID(),
		OfficeId:       f.office,
		ServicePointId: f.servicePoint,
		CounterId:      f.counterID,
		Nik:            badNik,
		Reason:         blangkov1.Reason_REASON_UNSPECIFIED,
	})
	cancel()
	st := expectError(codes.InvalidArgument, err)
	check(len(st.Details()) > 0, "the error carries google.rpc details (grpc-status-details-bin)")
	fields := map[string]bool{}
	echoes := strings.Contains(st.Message(), badNik)
	indonesianFields := true
	indonesian := ""
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				fields[v.GetField()] = true
				echoes = echoes || strings.Contains(v.GetDescription(), badNik)
				lm := v.GetLocalizedMessage()
				indonesianFields = indonesianFields && lm.GetLocale() == "id-ID" && lm.GetMessage() != ""
			}
		case *errdetails.LocalizedMessage:
			if d.GetLocale() == "id-ID" {
				indonesian = d.GetMessage()
			}
		}
	}
	check(fields["nik"], "a BadRequest field violation names the field 'nik'")
	check(fields["reason"], "another one names the field 'reason' (every bad field is named)")
	check(!echoes, "the error never echoes the NIK")
	check(strings.HasPrefix(indonesian, "permintaan tidak sah"),
		"a google.rpc.LocalizedMessage says it in Bahasa Indonesia (locale id-ID)")
	check(indonesianFields, "each field violation says why in Bahasa Indonesia too (its localized_message)")

	fmt.Println("\n== Counter: cancel a reservation that does not exist ==")
	ctx, cancel = call(f.counterToken)
	_, err = f.counter.CancelReservation(ctx, &blangkov1.CancelReservationRequest{
		RequestId: requestID(), ReservationId: "no-such-reservation",
	})
	cancel()
	st = expectError(codes.NotFound, err)
	hasResource := false
	for _, d := range st.Details() {
		_, ok := d.(*errdetails.ResourceInfo)
		hasResource = hasResource || ok
	}
	check(hasResource, "NOT_FOUND carries a google.rpc.ResourceInfo")

	fmt.Println("\n== Agency token on a counter RPC (agencies read, they do not reserve) ==")
	ctx, cancel = call(f.agencyToken)
	_, err = f.counter.Reserve(ctx, &blangkov1.ReserveRequest{
		RequestId: requestID(), OfficeId: f.office, ServicePointId: f.servicePoint,
		CounterId: f.counterID, Nik: f.nik, Reason: blangkov1.Reason_REASON_NEW_RECORDING,
	})
	cancel()
	expectError(codes.PermissionDenied, err)

	fmt.Println("\n== No token at all ==")
	ctx, cancel = call("")
	_, err = f.stock.ListStock(ctx, &blangkov1.ListStockRequest{})
	cancel()
	expectError(codes.Unauthenticated, err)
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func run() (code int) {
	target := env("BLANGKO_TARGET", "127.0.0.1:50051")
	f := &flow{
		agencyToken:  os.Getenv("BLANGKO_AGENCY_TOKEN"),
		counterToken: os.Getenv("BLANGKO_COUNTER_TOKEN"),
		office:       env("BLANGKO_OFFICE", "3275"),
		servicePoint: env("BLANGKO_SERVICE_POINT", "mpp"),
		counterID:    env("BLANGKO_COUNTER_ID", "loket-go"),
	}
	if f.agencyToken == "" || f.counterToken == "" {
		fmt.Fprintln(os.Stderr, "set BLANGKO_AGENCY_TOKEN and BLANGKO_COUNTER_TOKEN")
		return 2
	}
	f.nik = makeNik(f.office)

	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot create a client for %s: %v\n", target, err)
		return 1
	}
	defer conn.Close()
	f.stock = blangkov1.NewStockServiceClient(conn)
	f.counter = blangkov1.NewCounterServiceClient(conn)

	defer func() {
		r := recover()
		if r == nil {
			return
		}
		var failed checkFailed
		if err, ok := r.(error); ok && errors.As(err, &failed) {
			fmt.Fprintf(os.Stderr, "\nFAILED: %s\n", failed.what)
		} else if err, ok := r.(error); ok {
			fmt.Fprintf(os.Stderr, "\nFAILED: unexpected error: %v\n", err)
			printError(err)
		} else {
			panic(r)
		}
		fmt.Printf("go example: %d passed, 1 failed\n", passed)
		code = 1
	}()

	fmt.Printf("go example: grpc-go %s, server %s\n", grpc.Version, target)
	ctx, cancel := call("")
	info := must(f.stock.GetServerInfo(ctx, &blangkov1.GetServerInfoRequest{}))
	cancel()
	fmt.Printf("server %s (%s), API %s, up %d s\n", info.GetVersion(), info.GetDatabaseKind(), info.GetApiVersion(), info.GetUptimeSecs())
	check(info.GetApiVersion() == "blangko.v1", "the server speaks blangko.v1")
	f.agencyReads()
	f.counterFlow()
	f.errorFlow()
	fmt.Printf("\ngo example: %d passed, 0 failed\n", passed)
	return 0
}

func main() {
	os.Exit(run())
}
